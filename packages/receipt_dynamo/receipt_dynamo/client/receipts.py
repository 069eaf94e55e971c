"""Receipts, their lines and words, and the lines' and words' embedding statuses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from receipt_dynamo.client.codec import (
    Page,
    serialize,
)
from receipt_dynamo.client.table import Table, is_conditional_failure
from receipt_dynamo.entities import (
    EmbeddingStatus,
    EmbeddingTarget,
    ReceiptLine,
    ReceiptMetadata,
    ReceiptWord,
    receipt_prefix,
)
from receipt_dynamo.status_transitions import embedding_status_sources


class ReceiptQueries(Table):
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
        return self._gsi1_page(
            f"EMBEDDING_STATUS#{EmbeddingStatus(status).value}",
            f"{item_type}#",
            limit,
            next_token,
        )

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
            if is_conditional_failure(error):
                return False
            raise
        return True
