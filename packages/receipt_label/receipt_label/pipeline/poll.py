"""Steps 4 and 5: act on a batch's OpenAI status; once it has ended, store its vectors as a delta."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from typing import Any

from receipt_dynamo import (
    BatchStatus,
    BatchType,
    EmbeddingBatchResult,
    EmbeddingStatus,
    EmbeddingTarget,
    ReceiptLine,
    ReceiptWord,
    parse_custom_id,
    target_of,
)

from receipt_label.chroma_store import VectorRecord
from receipt_label.compaction import COLLECTIONS, attempt_delta_id, write_delta
from receipt_label.embedding_requests import line_neighbors, word_neighbors
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log
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

    requested = _requested_ids(client.files.content(batch.input_file_id).content)
    embeddings: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    if batch.status in ("completed", "expired"):
        if batch.output_file_id:
            _read_output(
                client.files.content(batch.output_file_id).content,
                requested,
                embeddings,
                errors,
            )
        if batch.error_file_id:
            _read_output(
                client.files.content(batch.error_file_id).content,
                requested,
                embeddings,
                errors,
            )
    failed = {
        custom_id: errors.get(custom_id, f"no embedding in the {batch.status} batch")
        for custom_id in requested
        if custom_id not in embeddings
    }
    records, missing = _vector_records(runtime, embeddings)
    failed.update(
        {custom_id: "the line or word no longer exists" for custom_id in missing}
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
            EmbeddingBatchResult(batch_id, c, EmbeddingStatus.FAILED, error)
            for c, error in sorted(failed.items())
        ]
    )
    for custom_id in succeeded:
        runtime.dynamo.set_embedding_status(
            parse_custom_id(custom_id), EmbeddingStatus.SUCCESS
        )
    for custom_id in failed:
        runtime.dynamo.set_embedding_status(
            parse_custom_id(custom_id), EmbeddingStatus.FAILED
        )
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
    final = (
        BatchStatus.COMPLETED
        if batch.status in ("completed", "expired")
        else BatchStatus.FAILED
    )
    runtime.dynamo.finish_batch_summary(batch_id, final, batch.output_file_id or "")
    action = {"completed": "processed", "expired": "processed_partial"}.get(
        batch.status, "marked_failed"
    )
    result = {
        **base,
        "action": action,
        "openai_status": batch.status,
        "succeeded": len(succeeded),
        "failed": len(failed),
        "delta_key": delta.delta_key if delta else None,
        "vector_count": delta.vector_count if delta else 0,
    }
    log(logger, logging.INFO, "polled", **result)
    return result


def _requested_ids(content: bytes) -> list[str]:
    ids = []
    for line in content.splitlines():
        if line.strip():
            ids.append(json.loads(line)["custom_id"])
    return ids


def _read_output(
    content: bytes, requested: list[str], embeddings: dict, errors: dict
) -> None:
    """Collects embeddings and per-request errors from an output or error file of the batch."""
    wanted = set(requested)
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            custom_id = record["custom_id"]
        except (ValueError, KeyError, TypeError):
            log(logger, logging.WARNING, "unreadable batch output line", line=number)
            continue
        if custom_id not in wanted:
            log(
                logger,
                logging.WARNING,
                "batch output names an id that was not requested",
                custom_id=custom_id,
            )
            continue
        response = record.get("response") or {}
        error = record.get("error")
        if error or response.get("status_code") != 200:
            detail = error or (response.get("body") or {}).get("error") or {}
            errors[custom_id] = (
                f"{detail.get('code', 'error')}: {detail.get('message', 'request failed')}"
            )
            continue
        try:
            vector = [float(v) for v in response["body"]["data"][0]["embedding"]]
        except (KeyError, IndexError, TypeError, ValueError):
            errors[custom_id] = "malformed embedding in the batch output"
            continue
        if not vector or not all(math.isfinite(v) for v in vector):
            errors[custom_id] = "empty or non-finite embedding in the batch output"
            continue
        embeddings[custom_id] = vector
    lengths = {len(v) for v in embeddings.values()}
    if len(lengths) > 1:
        raise RuntimeError(f"the batch output mixes embedding sizes {sorted(lengths)}")


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
