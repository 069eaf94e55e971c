"""Step 6: apply the deltas named by SQS messages (or all pending ones) to a collection's snapshot."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from receipt_label.compaction import (
    COLLECTIONS,
    Compactor,
    RetentionPolicy,
    parse_delta_key,
)
from receipt_label.errors import InvalidInput, MalformedSqsEvent
from receipt_label.logs import get_logger, log
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


def _message_ids(event: dict[str, Any]) -> list[tuple[str, Any]]:
    """(messageId, record) of each SQS record; MalformedSqsEvent if any record cannot be identified."""
    records = event.get("Records")
    if not isinstance(records, list):
        raise MalformedSqsEvent(
            f"the SQS event's Records must be a list of messages; got {type(records).__name__}"
        )
    identified = []
    for number, record in enumerate(records, start=1):
        message_id = record.get("messageId") if isinstance(record, dict) else None
        if not isinstance(message_id, str) or not message_id:
            raise MalformedSqsEvent(
                f"SQS record {number} has no messageId, so it cannot be reported failed alone"
            )
        identified.append((message_id, record))
    return identified


def compact(event: Any, runtime: Runtime) -> dict[str, Any]:
    if isinstance(event, dict) and "Records" not in event and "collection" in event:
        collection = event["collection"]
        if collection not in COLLECTIONS.values():
            raise InvalidInput(
                f"the event must be {COMPACT_EXAMPLE}; collection must be one of {sorted(COLLECTIONS.values())}, "
                f"got {collection!r}"
            )
        return _compactor(runtime).compact(collection).to_json()
    # Anything else is taken for an SQS batch; one that is malformed fails the invocation
    # (raised, never an error result, which Lambda would count as success for every message).
    if not isinstance(event, dict):
        raise MalformedSqsEvent(
            f"the event must be {COMPACT_EXAMPLE}; got {type(event).__name__}"
        )
    if "Records" not in event:
        raise MalformedSqsEvent(
            f"the event has neither Records nor collection; it must be {COMPACT_EXAMPLE}"
        )
    identified = _message_ids(event)
    compactor = _compactor(runtime)
    failures: list[str] = []
    wanted: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for message_id, record in identified:
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
            if delta_id in result.quarantined:
                # Reported (log and quarantine record); redelivering it cannot make it readable.
                log(
                    logger,
                    logging.ERROR,
                    "message names a quarantined delta; acknowledged",
                    message_id=message_id,
                    delta_id=delta_id,
                )
                continue
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


def _compactor(runtime: Runtime) -> Compactor:
    return Compactor(
        runtime.s3,
        runtime.config.chromadb_bucket,
        runtime.dynamo,
        lock_ttl_seconds=runtime.config.compaction_lock_ttl_seconds,
        retention=RetentionPolicy(
            keep_snapshots=runtime.config.compaction_keep_snapshots,
            grace_seconds=runtime.config.compaction_retention_seconds,
            max_deletes=runtime.config.compaction_max_deletes,
        ),
        clock=runtime.clock,
    )
