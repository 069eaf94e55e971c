"""The six steps of the embedding pipeline, one function per Lambda handler.

Each takes the Lambda event (already JSON-decoded) and a Runtime, validates the event fully
before changing anything, and returns a JSON-serializable result. Bad input raises
InvalidInput, which the entry wrapper turns into an error result.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
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
from receipt_label.compaction import (
    COLLECTIONS,
    Compactor,
    parse_delta_key,
    write_delta,
)
from receipt_label.embedding_requests import (
    ENDPOINT,
    is_noise_text,
    line_neighbors,
    line_requests,
    parse_ndjson,
    to_ndjson,
    word_neighbors,
    word_requests,
)
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")

REQUESTS_PREFIX = "embedding-requests"
# Stable namespace: a batch id is derived from its request file, so a redelivered submit is idempotent.
BATCH_ID_NAMESPACE = uuid.UUID("0b7f3c9e-5d1a-4e8b-9a52-3f1c2d4e6a70")
WAITING_STATUSES = {"validating", "in_progress", "finalizing", "cancelling"}
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 500


def _event_object(event: Any, example: str) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidInput(
            f"the event must be a JSON object like {example}; got {type(event).__name__}"
        )
    return event


def _required_string(event: dict[str, Any], name: str, example: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(
            f"the event needs a non-empty string {name!r}, as in {example}; got {value!r}"
        )
    return value


def _batch_type(event: dict[str, Any]) -> BatchType:
    value = event.get("batch_type", BatchType.LINE_EMBEDDING.value)
    try:
        return BatchType(value)
    except ValueError:
        allowed = " or ".join(t.value for t in BatchType)
        raise InvalidInput(f"batch_type must be {allowed}; got {value!r}") from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# 1. Find unembedded lines (or words)

FIND_EXAMPLE = '{"batch_type": "LINE_EMBEDDING"}'


def find_unembedded(event: Any, runtime: Runtime) -> dict[str, Any]:
    """Writes one NDJSON request file per receipt with lines (or words) still waiting for an embedding."""
    event = _event_object({} if event is None else event, FIND_EXAMPLE)
    batch_type = _batch_type(event)
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
    )
    return {"batches": batches, "noise_marked": len(noise)}


# 2. Submit to OpenAI

SUBMIT_EXAMPLE = '{"s3_bucket": "...", "s3_key": "embedding-requests/line/<image>/<receipt>/<run>.ndjson"}'


def submit_batch(event: Any, runtime: Runtime) -> dict[str, Any]:
    """Uploads one request file to OpenAI as a batch and records it; a repeated call returns the same batch."""
    event = _event_object(event, SUBMIT_EXAMPLE)
    bucket = _required_string(event, "s3_bucket", SUBMIT_EXAMPLE)
    key = _required_string(event, "s3_key", SUBMIT_EXAMPLE)
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
        submitted_at=_now(),
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


# 3. List pending batches

LIST_EXAMPLE = '{"batch_type": "LINE_EMBEDDING", "limit": 100}'


def list_pending_batches(event: Any, runtime: Runtime) -> list[dict[str, str]]:
    event = _event_object({} if event is None else event, LIST_EXAMPLE)
    batch_type = _batch_type(event)
    limit = event.get("limit", DEFAULT_LIST_LIMIT)
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= MAX_LIST_LIMIT
    ):
        raise InvalidInput(
            f"limit must be an integer from 1 to {MAX_LIST_LIMIT}; got {limit!r}"
        )
    found: list[dict[str, str]] = []
    token = None
    while len(found) < limit:
        page = runtime.dynamo.list_batch_summaries(
            BatchStatus.PENDING, batch_type, limit=limit - len(found), next_token=token
        )
        found.extend(
            {"batch_id": s.batch_id, "openai_batch_id": s.openai_batch_id}
            for s in page.items
        )
        token = page.next_token
        if token is None:
            break
    return found[:limit]


# 4 and 5. Poll line and word embeddings

POLL_EXAMPLE = '{"batch_id": "...", "openai_batch_id": "batch_..."}'


def poll_embeddings(
    event: Any, runtime: Runtime, batch_type: BatchType
) -> dict[str, Any]:
    """Acts on the OpenAI batch's status; once it has ended, stores its vectors as a delta."""
    event = _event_object(event, POLL_EXAMPLE)
    batch_id = _required_string(event, "batch_id", POLL_EXAMPLE)
    openai_batch_id = _required_string(event, "openai_batch_id", POLL_EXAMPLE)
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
        delta = write_delta(
            runtime.s3, runtime.config.chromadb_bucket, collection, batch_id, records
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
    # the work; the delta id is the batch id, so a redo replaces the delta instead of adding one.
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


# 6. Compaction

COMPACT_EXAMPLE = '{"collection": "receipt_lines"} or an SQS event with Records'


def _compaction_message(record: Any) -> tuple[str, str]:
    """(collection, delta_id) of one SQS record; InvalidInput says what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("body"), str):
        raise InvalidInput("the record has no string body")
    try:
        body = json.loads(record["body"])
    except ValueError:
        raise InvalidInput("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body is not a JSON object")
    collection = body.get("collection")
    if collection not in COLLECTIONS.values():
        raise InvalidInput(
            f"collection must be one of {sorted(COLLECTIONS.values())}; got {collection!r}"
        )
    delta_key = body.get("delta_key")
    if not isinstance(delta_key, str):
        raise InvalidInput("delta_key must be a string")
    try:
        return collection, parse_delta_key(collection, delta_key)
    except ValueError as error:
        raise InvalidInput(str(error)) from None


def compact(event: Any, runtime: Runtime) -> dict[str, Any]:
    event = _event_object(event, COMPACT_EXAMPLE)
    compactor = Compactor(
        runtime.s3,
        runtime.config.chromadb_bucket,
        runtime.dynamo,
        lock_ttl_seconds=runtime.config.compaction_lock_ttl_seconds,
    )
    if "Records" not in event:
        collection = event.get("collection")
        if collection not in COLLECTIONS.values():
            raise InvalidInput(
                f"the event must be {COMPACT_EXAMPLE}; collection must be one of {sorted(COLLECTIONS.values())}, "
                f"got {collection!r}"
            )
        return compactor.compact(collection).to_json()

    records = event["Records"]
    if not isinstance(records, list):
        raise InvalidInput("Records must be a list of SQS messages")
    failures: list[str] = []
    wanted: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for record in records:
        message_id = record.get("messageId") if isinstance(record, dict) else None
        if not isinstance(message_id, str):
            raise InvalidInput("every SQS record needs a messageId")
        try:
            collection, delta_id = _compaction_message(record)
        except InvalidInput as error:
            # A poison message is reported failed so SQS retries it and then moves it to the dead-letter queue.
            log(
                logger,
                logging.ERROR,
                "malformed compaction message",
                message_id=message_id,
                error=str(error),
            )
            failures.append(message_id)
            continue
        wanted[collection].append((message_id, delta_id))

    for collection, messages in sorted(wanted.items()):
        try:
            result = compactor.compact(collection)
        except Exception:
            logger.exception(
                "compaction failed", extra={"fields": {"collection": collection}}
            )
            failures.extend(message_id for message_id, _ in messages)
            continue
        for message_id, delta_id in messages:
            if delta_id not in result.applied_deltas:
                # Busy lock, or the delta is not complete yet: SQS delivers the message again later.
                log(
                    logger,
                    logging.INFO,
                    "delta not applied yet",
                    message_id=message_id,
                    delta_id=delta_id,
                    action=result.action,
                )
                failures.append(message_id)
    return {
        "batchItemFailures": [{"itemIdentifier": message_id} for message_id in failures]
    }
