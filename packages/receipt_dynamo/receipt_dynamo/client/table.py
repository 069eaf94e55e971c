"""The single receipts table: generic reads and writes, batched and retried."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
from botocore.exceptions import ClientError

from receipt_dynamo.client.codec import (
    decode_page_token,
    deserialize,
    encode_page_token,
    serialize,
)

BATCH_WRITE_SIZE = 25
BATCH_GET_SIZE = 100
_RETRY_ATTEMPTS = 8


class UnprocessedItemsError(RuntimeError):
    """DynamoDB kept returning unprocessed items after every retry."""


def is_conditional_failure(error: ClientError) -> bool:
    return (
        error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
    )


class Table:
    """The table, its boto3 client and the reads and writes every part of the client uses."""

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

    def _gsi1_page(
        self, pk: str, sk_prefix: str, limit: int | None, next_token: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the GSI1 items under `pk` whose sort key starts with `sk_prefix`, and the
        token of the next page (None after the last)."""
        query: dict[str, Any] = {
            "IndexName": "GSI1",
            "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :prefix)",
            "ExpressionAttributeValues": serialize({":pk": pk, ":prefix": sk_prefix}),
        }
        if limit is not None:
            query["Limit"] = limit
        start = decode_page_token(next_token)
        if start:
            query["ExclusiveStartKey"] = start
        items, last = next(self._query_pages(**query))
        return items, encode_page_token(last)

    def query_all(self, **query: Any) -> list[dict[str, Any]]:
        """Every page of a query on this table, deserialized."""
        return [item for page, _ in self._query_pages(**query) for item in page]
