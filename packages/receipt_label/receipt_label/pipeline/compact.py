"""Step 6: apply the deltas named by SQS messages (or all pending ones) to a collection's snapshot."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from receipt_label.compaction import COLLECTIONS, Compactor, parse_delta_key
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log
from receipt_label.pipeline.events import event_object
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")


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
    event = event_object(event, COMPACT_EXAMPLE)
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
