"""Step 1: find the lines (or words) still waiting for an embedding and write request files."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from typing import Any

from receipt_dynamo import (
    BatchType,
    EmbeddingClaims,
    EmbeddingStatus,
    ReceiptLine,
    ReceiptWord,
    target_of,
)

from receipt_label.embedding_requests import (
    is_noise_text,
    line_requests,
    to_ndjson,
    word_requests,
)
from receipt_label.logs import get_logger, log
from receipt_label.pipeline.events import batch_type_of, event_object
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")

REQUESTS_PREFIX = "embedding-requests"


FIND_EXAMPLE = '{"batch_type": "LINE_EMBEDDING"}'


def find_unembedded(event: Any, runtime: Runtime) -> dict[str, Any]:
    """Writes one NDJSON request file per receipt with lines (or words) still waiting for an embedding."""
    event = event_object({} if event is None else event, FIND_EXAMPLE)
    batch_type = batch_type_of(event)
    dynamo = runtime.dynamo
    waiting: dict[tuple[str, int], list[ReceiptLine | ReceiptWord]] = defaultdict(list)
    noise: list[ReceiptLine | ReceiptWord] = []
    list_page = (
        dynamo.list_lines_by_embedding_status
        if batch_type is BatchType.LINE_EMBEDDING
        else dynamo.list_words_by_embedding_status
    )
    token = None
    while True:
        page = list_page(EmbeddingStatus.NONE, next_token=token)
        for entity in page.items:
            if is_noise_text(entity.text) or getattr(entity, "is_noise", False):
                noise.append(entity)
            else:
                waiting[(entity.image_id, entity.receipt_id)].append(entity)
        token = page.next_token
        if token is None:
            break
    # Lines claimed by a submission that died before recording its batch go out again; the
    # submitter checks OpenAI for that batch before it sends them (pipeline.recovery).
    item_type = (
        ReceiptLine.TYPE if batch_type is BatchType.LINE_EMBEDDING else ReceiptWord.TYPE
    )
    stranded = EmbeddingClaims(dynamo).expired_claims(item_type, runtime.clock())
    for entity, _ in stranded:
        waiting[(entity.image_id, entity.receipt_id)].append(entity)
    for entity in noise:
        dynamo.set_embedding_status(
            target_of(entity), EmbeddingStatus.NOISE, only_from=[EmbeddingStatus.NONE]
        )

    run_id = uuid.uuid4().hex
    kind = "line" if batch_type is BatchType.LINE_EMBEDDING else "word"
    batches = []
    for (image_id, receipt_id), entities in sorted(waiting.items()):
        entities.sort(key=lambda e: target_of(e).custom_id)
        if batch_type is BatchType.LINE_EMBEDDING:
            requests = line_requests(entities)
        else:
            requests = word_requests(
                entities, dynamo.list_receipt_words(image_id, receipt_id)
            )
        key = f"{REQUESTS_PREFIX}/{kind}/{image_id}/{receipt_id:05d}/{run_id}.ndjson"
        runtime.s3.put_object(
            Bucket=runtime.config.batch_bucket,
            Key=key,
            Body=to_ndjson(requests),
            ContentType="application/x-ndjson",
        )
        batches.append(
            {
                "s3_bucket": runtime.config.batch_bucket,
                "s3_key": key,
                "image_id": image_id,
                "receipt_id": receipt_id,
                "batch_type": batch_type.value,
                "request_count": len(requests),
            }
        )
    log(
        logger,
        logging.INFO,
        "found unembedded",
        batch_type=batch_type.value,
        files=len(batches),
        noise=len(noise),
        stranded=len(stranded),
    )
    return {"batches": batches, "noise_marked": len(noise)}
