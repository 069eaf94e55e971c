"""Steps 4 and 5: act on a batch's OpenAI status; once it has ended, store its vectors as a delta."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from receipt_dynamo import (
    BatchStatus,
    BatchType,
    EmbeddingBatchResult,
    EmbeddingClaims,
    EmbeddingStatus,
    EmbeddingTarget,
    ReceiptLine,
    ReceiptWord,
    parse_custom_id,
    target_of,
)

from receipt_label.chroma_store import VectorRecord
from receipt_label.compaction import COLLECTIONS, attempt_delta_id, write_delta
from receipt_label.embedding_requests import (
    EMBEDDING_DIMENSIONS,
    line_neighbors,
    word_neighbors,
)
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log
from receipt_label.pipeline.batch_output import (
    MAX_EMBEDDING_ATTEMPTS,
    LineFailure,
    read_batch_output,
)
from receipt_label.pipeline.events import event_object, required_string
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")

WAITING_STATUSES = {"validating", "in_progress", "finalizing", "cancelling"}


POLL_EXAMPLE = '{"batch_id": "...", "openai_batch_id": "batch_..."}'


def poll_embeddings(
    event: Any, runtime: Runtime, batch_type: BatchType
) -> dict[str, Any]:
    """Acts on the OpenAI batch's status; once it has ended, stores its vectors as a delta."""
    event = event_object(event, POLL_EXAMPLE)
    batch_id = required_string(event, "batch_id", POLL_EXAMPLE)
    openai_batch_id = required_string(event, "openai_batch_id", POLL_EXAMPLE)
    summary = runtime.dynamo.get_batch_summary(batch_id)
    if summary is None:
        raise InvalidInput(
            f"no batch summary for batch_id {batch_id!r}; pass an id from list_pending_batches"
        )
    if summary.openai_batch_id != openai_batch_id:
        raise InvalidInput(
            f"batch {batch_id} belongs to OpenAI batch {summary.openai_batch_id}, not {openai_batch_id!r}"
        )
    if summary.batch_type is not batch_type:
        handler = (
            "poll_word_embeddings"
            if summary.batch_type is BatchType.WORD_EMBEDDING
            else "poll_line_embeddings"
        )
        raise InvalidInput(
            f"batch {batch_id} is a {summary.batch_type.value} batch; send it to {handler}"
        )
    base = {"batch_id": batch_id, "openai_batch_id": openai_batch_id}
    if summary.status is not BatchStatus.PENDING:
        return {**base, "action": "already_processed", "status": summary.status.value}

    client = runtime.openai
    batch = client.batches.retrieve(openai_batch_id)
    if batch.status in WAITING_STATUSES:
        return {**base, "action": "wait", "openai_status": batch.status}

    output = read_batch_output(client, batch, EMBEDDING_DIMENSIONS)
    embeddings = output.embeddings
    records, missing = _vector_records(runtime, embeddings)
    failures = dict(output.failures)
    failures.update(
        {c: LineFailure("the line or word no longer exists", False) for c in missing}
    )

    collection = COLLECTIONS[batch_type]
    delta = None
    if records:
        # Each attempt writes under its own delta id, so overlapping polls of one batch never
        # mix their files; the snapshot upserts by id, so merging both copies is harmless.
        delta = write_delta(
            runtime.s3,
            runtime.config.chromadb_bucket,
            collection,
            attempt_delta_id(batch_id),
            records,
        )
    succeeded = [r.id for r in records]
    runtime.dynamo.put_many(
        [
            EmbeddingBatchResult(batch_id, custom_id, EmbeddingStatus.SUCCESS)
            for custom_id in succeeded
        ]
        + [
            EmbeddingBatchResult(batch_id, c, EmbeddingStatus.FAILED, failure.reason)
            for c, failure in sorted(failures.items())
        ]
    )
    for custom_id in succeeded:
        runtime.dynamo.set_embedding_status(
            parse_custom_id(custom_id), EmbeddingStatus.SUCCESS
        )
    retried = _settle_failures(runtime, batch_id, failures)
    if delta is not None:
        message = {
            "delta_key": delta.delta_key,
            "collection": collection,
            "vector_count": delta.vector_count,
            "batch_id": batch_id,
        }
        runtime.sqs.send_message(
            QueueUrl=runtime.config.compaction_queue_url,
            MessageBody=json.dumps(message),
        )
    # Last, so that a crash before this point leaves the batch PENDING and the next poll redoes
    # the work (writing a delta of its own, which merges as a harmless duplicate).
    final = BatchStatus.FAILED if batch.status == "failed" else BatchStatus.COMPLETED
    runtime.dynamo.finish_batch_summary(batch_id, final, batch.output_file_id or "")
    action = {
        "completed": "processed",
        "expired": "processed_partial",
        "cancelled": "processed_partial",
    }.get(batch.status, "marked_failed")
    result = {
        **base,
        "action": action,
        "openai_status": batch.status,
        "succeeded": len(succeeded),
        "failed": len(failures),
        "retried": retried,
        "delta_key": delta.delta_key if delta else None,
        "vector_count": delta.vector_count if delta else 0,
    }
    log(logger, logging.INFO, "polled", **result)
    return result


def _settle_failures(
    runtime: Runtime, batch_id: str, failures: dict[str, LineFailure]
) -> int:
    """Lines worth another try go back to NONE (a later find picks them up), unless they ran out
    of attempts; the others become FAILED. Returns how many went back."""
    targets = {c: parse_custom_id(c) for c in failures}
    states = EmbeddingClaims(runtime.dynamo).states(targets.values())
    retried = 0
    for custom_id, failure in sorted(failures.items()):
        state = states.get(custom_id)
        if state is None or state.claim_batch_id not in (None, batch_id):
            continue  # gone, or already sent again (this is a redone poll)
        if failure.retry and state.attempts < MAX_EMBEDDING_ATTEMPTS:
            retried += runtime.dynamo.set_embedding_status(
                targets[custom_id],
                EmbeddingStatus.NONE,
                only_from=[EmbeddingStatus.PENDING],
            )
        else:
            runtime.dynamo.set_embedding_status(
                targets[custom_id], EmbeddingStatus.FAILED
            )
    return retried


def _vector_records(
    runtime: Runtime, embeddings: dict[str, list[float]]
) -> tuple[list[VectorRecord], list[str]]:
    """Vectors with their documents and metadata; also the ids whose line or word is gone."""
    by_receipt: dict[tuple[str, int], list[EmbeddingTarget]] = defaultdict(list)
    for custom_id in embeddings:
        target = parse_custom_id(custom_id)
        by_receipt[(target.image_id, target.receipt_id)].append(target)
    records, missing = [], []
    for (image_id, receipt_id), targets in sorted(by_receipt.items()):
        metadata = runtime.dynamo.get_receipt_metadata(image_id, receipt_id)
        merchant = metadata.best_merchant_name if metadata else ""
        lines = runtime.dynamo.list_receipt_lines(image_id, receipt_id)
        line_context = line_neighbors(lines)
        entities: dict[str, ReceiptLine | ReceiptWord] = {
            target_of(line).custom_id: line for line in lines
        }
        word_context: dict[str, tuple[str, str]] = {}
        if any(t.is_word for t in targets):
            words = runtime.dynamo.list_receipt_words(image_id, receipt_id)
            word_context = word_neighbors(words)
            entities.update({target_of(word).custom_id: word for word in words})
        for target in sorted(targets, key=lambda t: t.custom_id):
            entity = entities.get(target.custom_id)
            if entity is None:
                missing.append(target.custom_id)
                continue
            box = entity.bounding_box
            fields: dict[str, Any] = {
                "image_id": image_id,
                "receipt_id": receipt_id,
                "line_id": target.line_id,
                "text": entity.text,
                "x": box.x,
                "y": box.y,
                "width": box.width,
                "height": box.height,
                "confidence": entity.confidence,
            }
            if merchant:
                fields["merchant_name"] = merchant
            if target.is_word:
                fields["word_id"] = target.word_id
                fields["left"], fields["right"] = word_context[target.custom_id]
            else:
                fields["prev_line"], fields["next_line"] = line_context[
                    target.custom_id
                ]
            records.append(
                VectorRecord(
                    target.custom_id, embeddings[target.custom_id], entity.text, fields
                )
            )
    return records, missing
