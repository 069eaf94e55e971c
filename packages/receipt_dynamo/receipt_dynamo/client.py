"""The queries and writes the pipeline needs against the single receipts table."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from receipt_dynamo.entities import (
    BatchStatus,
    BatchSummary,
    BatchType,
    CompactionLock,
    EmbeddingBatchResult,
    EmbeddingStatus,
    EmbeddingTarget,
    EntityError,
    ReceiptLine,
    ReceiptMetadata,
    ReceiptWord,
    lock_key,
    receipt_prefix,
)
from receipt_dynamo.status_transitions import embedding_status_sources

BATCH_WRITE_SIZE = 25
BATCH_GET_SIZE = 100
_RETRY_ATTEMPTS = 8

T = TypeVar("T")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class UnprocessedItemsError(RuntimeError):
    """DynamoDB kept returning unprocessed items after every retry."""


def _to_dynamo_value(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dynamo_value(v) for v in value]
    return value


def _from_dynamo_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo_value(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_from_dynamo_value(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo_value(v)) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _from_dynamo_value(_deserializer.deserialize(v)) for k, v in item.items()
    }


def encode_page_token(last_evaluated_key: dict[str, Any] | None) -> str | None:
    if not last_evaluated_key:
        return None
    return base64.urlsafe_b64encode(
        json.dumps(last_evaluated_key, sort_keys=True).encode()
    ).decode()


def decode_page_token(token: str | None) -> dict[str, Any] | None:
    if token is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise EntityError(
            f"page token {token!r} is not one this API returned; pass back next_token unchanged"
        ) from None
    if not isinstance(key, dict):
        raise EntityError(
            f"page token {token!r} is not one this API returned; pass back next_token unchanged"
        )
    return key


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str | None


def _is_conditional_failure(error: ClientError) -> bool:
    return (
        error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
    )


class ReceiptDynamoClient:
    def __init__(
        self,
        table_name: str,
        dynamodb: Any | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not table_name:
            raise ValueError("table_name is empty; pass the DynamoDB table's name")
        self.table_name = table_name
        # A session of its own: boto3's shared default session is not thread-safe.
        self._dynamodb = (
            dynamodb
            if dynamodb is not None
            else boto3.session.Session().client("dynamodb")
        )
        self._sleep = sleep

    @property
    def dynamodb(self) -> Any:
        """The low-level boto3 client, for modules that add their own conditional writes."""
        return self._dynamodb

    # Generic reads and writes

    def put(self, entity: Any) -> None:
        self._dynamodb.put_item(
            TableName=self.table_name, Item=serialize(entity.to_item())
        )

    def put_many(self, entities: Iterable[Any]) -> int:
        """Writes in batches of 25 and retries what DynamoDB leaves unprocessed, with backoff."""
        items = [entity.to_item() for entity in entities]
        for start in range(0, len(items), BATCH_WRITE_SIZE):
            requests = [
                {"PutRequest": {"Item": serialize(item)}}
                for item in items[start : start + BATCH_WRITE_SIZE]
            ]
            self._batch_write(requests)
        return len(items)

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending = {self.table_name: requests}
        for attempt in range(_RETRY_ATTEMPTS):
            response = self._dynamodb.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            self._sleep(min(0.05 * 2**attempt, 2.0))
        left = sum(len(v) for v in pending.values())
        raise UnprocessedItemsError(
            f"{left} items stayed unprocessed after {_RETRY_ATTEMPTS} attempts"
        )

    def get_items(self, keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Batch-gets items (strongly consistent) in the order of `keys`, skipping the missing."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        unique = list({(k["PK"], k["SK"]): k for k in keys}.values())
        for start in range(0, len(unique), BATCH_GET_SIZE):
            request = {
                self.table_name: {
                    "Keys": [
                        serialize(k) for k in unique[start : start + BATCH_GET_SIZE]
                    ],
                    "ConsistentRead": True,
                }
            }
            for attempt in range(_RETRY_ATTEMPTS):
                response = self._dynamodb.batch_get_item(RequestItems=request)
                for raw in response.get("Responses", {}).get(self.table_name, []):
                    item = deserialize(raw)
                    found[(item["PK"], item["SK"])] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(min(0.05 * 2**attempt, 2.0))
            else:
                raise UnprocessedItemsError(
                    f"keys stayed unprocessed after {_RETRY_ATTEMPTS} attempts"
                )
        return [found[(k["PK"], k["SK"])] for k in keys if (k["PK"], k["SK"]) in found]

    def _get(self, key: dict[str, str]) -> dict[str, Any] | None:
        response = self._dynamodb.get_item(
            TableName=self.table_name, Key=serialize(key), ConsistentRead=True
        )
        return deserialize(response["Item"]) if "Item" in response else None

    def _query_pages(
        self, **query: Any
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
        while True:
            response = self._dynamodb.query(TableName=self.table_name, **query)
            last = response.get("LastEvaluatedKey")
            yield [deserialize(item) for item in response.get("Items", [])], last
            if not last:
                return
            query["ExclusiveStartKey"] = last

    def query_all(self, **query: Any) -> list[dict[str, Any]]:
        """Every page of a query on this table, deserialized."""
        return [item for page, _ in self._query_pages(**query) for item in page]

    # Receipts

    def get_receipt_metadata(
        self, image_id: str, receipt_id: int
    ) -> ReceiptMetadata | None:
        pk, sk = receipt_prefix(image_id, receipt_id)
        item = self._get({"PK": pk, "SK": f"{sk}#METADATA"})
        return ReceiptMetadata.from_item(item) if item else None

    def _receipt_items(
        self, image_id: str, receipt_id: int, item_type: str
    ) -> list[dict[str, Any]]:
        pk, sk = receipt_prefix(image_id, receipt_id)
        return self.query_all(
            KeyConditionExpression="PK = :pk AND begins_with(SK, :sk)",
            FilterExpression="#type = :type",
            ExpressionAttributeNames={"#type": "TYPE"},
            ExpressionAttributeValues=serialize(
                {":pk": pk, ":sk": f"{sk}#LINE#", ":type": item_type}
            ),
            ConsistentRead=True,
        )

    def list_receipt_lines(self, image_id: str, receipt_id: int) -> list[ReceiptLine]:
        return [
            ReceiptLine.from_item(i)
            for i in self._receipt_items(image_id, receipt_id, ReceiptLine.TYPE)
        ]

    def list_receipt_words(self, image_id: str, receipt_id: int) -> list[ReceiptWord]:
        return [
            ReceiptWord.from_item(i)
            for i in self._receipt_items(image_id, receipt_id, ReceiptWord.TYPE)
        ]

    def _by_embedding_status(
        self,
        status: EmbeddingStatus,
        item_type: str,
        limit: int | None,
        next_token: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        query: dict[str, Any] = {
            "IndexName": "GSI1",
            "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :type)",
            "ExpressionAttributeValues": serialize(
                {
                    ":pk": f"EMBEDDING_STATUS#{EmbeddingStatus(status).value}",
                    ":type": f"{item_type}#",
                }
            ),
        }
        if limit is not None:
            query["Limit"] = limit
        start = decode_page_token(next_token)
        if start:
            query["ExclusiveStartKey"] = start
        items, last = next(self._query_pages(**query))
        return items, encode_page_token(last)

    def list_lines_by_embedding_status(
        self,
        status: EmbeddingStatus,
        *,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> Page[ReceiptLine]:
        items, token = self._by_embedding_status(
            status, ReceiptLine.TYPE, limit, next_token
        )
        return Page([ReceiptLine.from_item(i) for i in items], token)

    def list_words_by_embedding_status(
        self,
        status: EmbeddingStatus,
        *,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> Page[ReceiptWord]:
        items, token = self._by_embedding_status(
            status, ReceiptWord.TYPE, limit, next_token
        )
        return Page([ReceiptWord.from_item(i) for i in items], token)

    def get_embedding_targets(
        self, targets: list[EmbeddingTarget]
    ) -> dict[str, ReceiptLine | ReceiptWord]:
        """The current line or word behind each custom_id; missing ones are left out."""
        by_key = {(t.key["PK"], t.key["SK"]): t for t in targets}
        found: dict[str, ReceiptLine | ReceiptWord] = {}
        for item in self.get_items([t.key for t in targets]):
            target = by_key[(item["PK"], item["SK"])]
            found[target.custom_id] = (
                ReceiptWord if target.is_word else ReceiptLine
            ).from_item(item)
        return found

    def set_embedding_status(
        self,
        target: EmbeddingTarget,
        status: EmbeddingStatus,
        *,
        only_from: Iterable[EmbeddingStatus] | None = None,
    ) -> bool:
        """Sets a line's or word's status (and its GSI1PK) in one conditional write.

        Only the moves in EMBEDDING_STATUS_TRANSITIONS are made, narrowed further to `only_from`
        when given; False if the line or word is missing or its status may not move to `status`.
        """
        status = EmbeddingStatus(status)
        sources = embedding_status_sources(status)
        if only_from is not None:
            sources &= {EmbeddingStatus(s) for s in only_from}
        if not sources:
            return False
        allowed = sorted(s.value for s in sources)
        names = [f":from{i}" for i in range(len(allowed))]
        values: dict[str, Any] = {
            ":status": status.value,
            ":gsi": f"EMBEDDING_STATUS#{status.value}",
            **dict(zip(names, allowed)),
        }
        try:
            self._dynamodb.update_item(
                TableName=self.table_name,
                Key=serialize(target.key),
                UpdateExpression="SET embedding_status = :status, GSI1PK = :gsi",
                ConditionExpression=f"attribute_exists(PK) AND embedding_status IN ({', '.join(names)})",
                ExpressionAttributeValues=serialize(values),
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True

    # Batches

    def get_batch_summary(self, batch_id: str) -> BatchSummary | None:
        item = self._get({"PK": f"BATCH#{batch_id}", "SK": "STATUS"})
        return BatchSummary.from_item(item) if item else None

    def put_batch_summary_if_absent(self, summary: BatchSummary) -> bool:
        try:
            self._dynamodb.put_item(
                TableName=self.table_name,
                Item=serialize(summary.to_item()),
                ConditionExpression="attribute_not_exists(PK)",
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True

    def finish_batch_summary(
        self, batch_id: str, status: BatchStatus, result_file_id: str = ""
    ) -> bool:
        """Moves a PENDING summary to COMPLETED or FAILED; False if it was no longer PENDING."""
        status = BatchStatus(status)
        summary = self.get_batch_summary(batch_id)
        if summary is None:
            return False
        try:
            self._dynamodb.update_item(
                TableName=self.table_name,
                Key=serialize(summary.key),
                UpdateExpression="SET #status = :status, GSI1PK = :gsi, result_file_id = :result",
                ConditionExpression="#status = :pending",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=serialize(
                    {
                        ":status": status.value,
                        ":gsi": f"STATUS#{status.value}",
                        ":result": result_file_id,
                        ":pending": BatchStatus.PENDING.value,
                    }
                ),
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True

    def list_batch_results(self, batch_id: str) -> list[EmbeddingBatchResult]:
        items = self.query_all(
            KeyConditionExpression="PK = :pk AND begins_with(SK, :sk)",
            ExpressionAttributeValues=serialize(
                {":pk": f"BATCH#{batch_id}", ":sk": "RESULT#"}
            ),
            ConsistentRead=True,
        )
        return [EmbeddingBatchResult.from_item(item) for item in items]

    def list_batch_summaries(
        self,
        status: BatchStatus,
        batch_type: BatchType,
        *,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> Page[BatchSummary]:
        query: dict[str, Any] = {
            "IndexName": "GSI1",
            "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :type)",
            "ExpressionAttributeValues": serialize(
                {
                    ":pk": f"STATUS#{BatchStatus(status).value}",
                    ":type": f"BATCH_TYPE#{BatchType(batch_type).value}#",
                }
            ),
        }
        if limit is not None:
            query["Limit"] = limit
        start = decode_page_token(next_token)
        if start:
            query["ExclusiveStartKey"] = start
        items, last = next(self._query_pages(**query))
        return Page([BatchSummary.from_item(i) for i in items], encode_page_token(last))

    # Compaction lock

    def get_lock(self, collection: str) -> CompactionLock | None:
        item = self._get(lock_key(collection))
        return CompactionLock.from_item(item) if item else None

    def acquire_lock(
        self,
        collection: str,
        owner: str,
        ttl_seconds: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Takes the lock if it is free, expired, or already ours."""
        now = time.time() if now is None else now
        lock = CompactionLock(
            collection, owner, expires=now + ttl_seconds, heartbeat=now
        )
        try:
            self._dynamodb.put_item(
                TableName=self.table_name,
                Item=serialize(lock.to_item()),
                ConditionExpression="attribute_not_exists(PK) OR expires < :now OR #owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=serialize({":now": now, ":owner": owner}),
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True

    def refresh_lock(
        self,
        collection: str,
        owner: str,
        ttl_seconds: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Extends the lock only while it is still ours and unexpired: the fencing check."""
        now = time.time() if now is None else now
        expires = now + ttl_seconds
        try:
            self._dynamodb.update_item(
                TableName=self.table_name,
                Key=serialize(lock_key(collection)),
                UpdateExpression="SET expires = :expires, heartbeat = :now, TimeToLive = :ttl",
                ConditionExpression="#owner = :owner AND expires >= :now",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=serialize(
                    {
                        ":expires": expires,
                        ":now": now,
                        ":ttl": int(expires) + CompactionLock.TTL_GRACE_SECONDS,
                        ":owner": owner,
                    }
                ),
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True

    def release_lock(self, collection: str, owner: str) -> bool:
        try:
            self._dynamodb.delete_item(
                TableName=self.table_name,
                Key=serialize(lock_key(collection)),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=serialize({":owner": owner}),
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True
