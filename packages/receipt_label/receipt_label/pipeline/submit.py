"""Step 2: send one request file to OpenAI as a batch, exactly once."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from botocore.exceptions import ClientError
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    EmbeddingStatus,
    parse_custom_id,
)

from receipt_label.embedding_requests import ENDPOINT, parse_ndjson, to_ndjson
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log
from receipt_label.pipeline.events import event_object, now_iso, required_string
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")

# Stable namespace: a batch id is derived from its request file, so a redelivered submit is idempotent.
BATCH_ID_NAMESPACE = uuid.UUID("0b7f3c9e-5d1a-4e8b-9a52-3f1c2d4e6a70")


SUBMIT_EXAMPLE = '{"s3_bucket": "...", "s3_key": "embedding-requests/line/<image>/<receipt>/<run>.ndjson"}'


def submit_batch(event: Any, runtime: Runtime) -> dict[str, Any]:
    """Uploads one request file to OpenAI as a batch and records it; a repeated call returns the same batch."""
    event = event_object(event, SUBMIT_EXAMPLE)
    bucket = required_string(event, "s3_bucket", SUBMIT_EXAMPLE)
    key = required_string(event, "s3_key", SUBMIT_EXAMPLE)
    if bucket != runtime.config.batch_bucket:
        raise InvalidInput(
            f"s3_bucket {bucket!r} is not this pipeline's batch bucket {runtime.config.batch_bucket!r}"
        )
    source = f"s3://{bucket}/{key}"
    try:
        data = runtime.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise InvalidInput(
                f"{source} does not exist; pass an s3_key returned by find_unembedded_lines"
            ) from None
        raise
    batch_type, requests = parse_ndjson(data, source)
    batch_id = str(uuid.uuid5(BATCH_ID_NAMESPACE, source))
    dynamo = runtime.dynamo

    existing = dynamo.get_batch_summary(batch_id)
    if existing is not None:
        log(
            logger,
            logging.INFO,
            "already submitted",
            batch_id=batch_id,
            openai_batch_id=existing.openai_batch_id,
        )
        return {
            "batch_id": batch_id,
            "openai_batch_id": existing.openai_batch_id,
            "submitted": 0,
        }

    # Only what is still waiting goes out, so a request file found twice is not embedded twice.
    targets = [parse_custom_id(r.custom_id) for r in requests]
    current = dynamo.get_embedding_targets(targets)
    waiting = [
        r
        for r in requests
        if r.custom_id in current
        and current[r.custom_id].embedding_status is EmbeddingStatus.NONE
    ]
    if not waiting:
        log(
            logger,
            logging.INFO,
            "nothing left to submit",
            source=source,
            requests=len(requests),
        )
        return {"batch_id": None, "openai_batch_id": None, "submitted": 0}

    client = runtime.openai
    uploaded = client.files.create(
        file=(f"{batch_id}.jsonl", to_ndjson(waiting), "application/jsonl"),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata={"batch_id": batch_id, "batch_type": batch_type.value},
    )
    refs = sorted(
        {
            (t.image_id, t.receipt_id)
            for t in (parse_custom_id(r.custom_id) for r in waiting)
        }
    )
    summary = BatchSummary(
        batch_id=batch_id,
        batch_type=batch_type,
        openai_batch_id=batch.id,
        submitted_at=now_iso(),
        status=BatchStatus.PENDING,
        receipt_refs=tuple(refs),
    )
    # The summary goes first: a crash after it leaves a batch that polling still finishes,
    # while lines marked PENDING without a summary would never be polled.
    if not dynamo.put_batch_summary_if_absent(summary):
        winner = dynamo.get_batch_summary(batch_id)
        client.batches.cancel(batch.id)
        log(
            logger,
            logging.WARNING,
            "lost a submit race; cancelled duplicate",
            batch_id=batch_id,
            cancelled=batch.id,
        )
        return {
            "batch_id": batch_id,
            "openai_batch_id": winner.openai_batch_id if winner else None,
            "submitted": 0,
        }
    for request in waiting:
        dynamo.set_embedding_status(
            parse_custom_id(request.custom_id),
            EmbeddingStatus.PENDING,
            only_from=[EmbeddingStatus.NONE],
        )
    log(
        logger,
        logging.INFO,
        "submitted",
        batch_id=batch_id,
        openai_batch_id=batch.id,
        batch_type=batch_type.value,
        requests=len(waiting),
    )
    return {
        "batch_id": batch_id,
        "openai_batch_id": batch.id,
        "submitted": len(waiting),
    }
