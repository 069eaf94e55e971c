"""Submission claims on lines and words: each one goes to OpenAI at most once per embedding.

A submitter claims a line with one conditional write before it calls OpenAI: the line becomes
PENDING with `claim_batch_id` (the submission's batch id), `claim_started`, `claim_expires`
(a lease) and one more `embedding_attempts`. Only a line still NONE can be claimed, or one whose claim expired
without being confirmed and whose holder the caller has checked never reached OpenAI. Once the
batch is recorded the claim is confirmed (`claim_expires` removed): the line then belongs to
that batch until polling settles it. A claim whose submission failed is released.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from receipt_dynamo.client import ReceiptDynamoClient, serialize
from receipt_dynamo.entities import (
    EmbeddingStatus,
    EmbeddingTarget,
    ReceiptLine,
    ReceiptWord,
)

_NONE = EmbeddingStatus.NONE.value
_PENDING = EmbeddingStatus.PENDING.value


@dataclass(frozen=True)
class ClaimState:
    """What a line's item says about its embedding and any claim on it."""

    status: EmbeddingStatus
    claim_batch_id: str | None
    claim_expires: float | None  # None once the claim is confirmed (or there is none)
    claim_started: float | None
    attempts: int

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ClaimState:
        expires, started = item.get("claim_expires"), item.get("claim_started")
        return cls(
            status=EmbeddingStatus(item["embedding_status"]),
            claim_batch_id=item.get("claim_batch_id"),
            claim_expires=None if expires is None else float(expires),
            claim_started=None if started is None else float(started),
            attempts=int(item.get("embedding_attempts", 0)),
        )

    @property
    def unconfirmed(self) -> bool:
        """Claimed by a submission that has not (yet) recorded its batch."""
        return (
            self.status is EmbeddingStatus.PENDING
            and self.claim_batch_id is not None
            and self.claim_expires is not None
        )

    def expired(self, now: float) -> bool:
        return self.unconfirmed and self.claim_expires < now


class EmbeddingClaims:
    def __init__(self, dynamo: ReceiptDynamoClient):
        self._dynamo = dynamo

    def _update(self, target: EmbeddingTarget, **request: Any) -> bool:
        values = request.pop("values")
        try:
            self._dynamo.dynamodb.update_item(
                TableName=self._dynamo.table_name,
                Key=serialize(target.key),
                ExpressionAttributeValues=serialize(values),
                **request,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == (
                "ConditionalCheckFailedException"
            ):
                return False
            raise
        return True

    def states(self, targets: Iterable[EmbeddingTarget]) -> dict[str, ClaimState]:
        """The claim state of each existing target, by custom_id (strongly consistent)."""
        by_key = {(t.key["PK"], t.key["SK"]): t for t in targets}
        return {
            by_key[(item["PK"], item["SK"])].custom_id: ClaimState.from_item(item)
            for item in self._dynamo.get_items([t.key for t in by_key.values()])
        }

    def claim(
        self,
        target: EmbeddingTarget,
        batch_id: str,
        expires: float,
        *,
        now: float,
        expired_holder: str | None = None,
    ) -> bool:
        """Claims a NONE line; or one whose unconfirmed claim by `expired_holder` expired before `now`."""
        condition = "attribute_exists(PK) AND (embedding_status = :none"
        values: dict[str, Any] = {
            ":none": _NONE,
            ":pending": _PENDING,
            ":gsi": f"EMBEDDING_STATUS#{_PENDING}",
            ":batch": batch_id,
            ":expires": expires,
            ":started": now,
            ":one": 1,
        }
        if expired_holder is not None:
            condition += (
                " OR (claim_batch_id = :holder AND attribute_exists(claim_expires)"
                " AND claim_expires < :started)"
            )
            values[":holder"] = expired_holder
        return self._update(
            target,
            UpdateExpression=(
                "SET embedding_status = :pending, GSI1PK = :gsi,"
                " claim_batch_id = :batch, claim_expires = :expires,"
                " claim_started = :started"
                " ADD embedding_attempts :one"
            ),
            ConditionExpression=condition + ")",
            values=values,
        )

    def confirm(self, target: EmbeddingTarget, batch_id: str) -> bool:
        """The batch is recorded: the line is no longer claimable by anyone else."""
        return self._update(
            target,
            UpdateExpression="REMOVE claim_expires",
            ConditionExpression="claim_batch_id = :batch AND embedding_status = :pending",
            values={":batch": batch_id, ":pending": _PENDING},
        )

    def release(self, target: EmbeddingTarget, batch_id: str) -> bool:
        """Gives back an unconfirmed claim that never reached OpenAI; the attempt does not count."""
        return self._update(
            target,
            UpdateExpression=(
                "SET embedding_status = :none, GSI1PK = :gsi"
                " REMOVE claim_batch_id, claim_expires, claim_started"
                " ADD embedding_attempts :minus"
            ),
            ConditionExpression=(
                "claim_batch_id = :batch AND attribute_exists(claim_expires)"
                " AND embedding_status = :pending"
            ),
            values={
                ":none": _NONE,
                ":pending": _PENDING,
                ":gsi": f"EMBEDDING_STATUS#{_NONE}",
                ":batch": batch_id,
                ":minus": -1,
            },
        )

    def expired_claims(
        self, item_type: str, now: float
    ) -> list[tuple[ReceiptLine | ReceiptWord, ClaimState]]:
        """PENDING lines (or words) whose claim expired unconfirmed: their submitter died or gave up."""
        entity_class = ReceiptWord if item_type == ReceiptWord.TYPE else ReceiptLine
        items = self._dynamo.query_all(
            IndexName="GSI1",
            KeyConditionExpression="GSI1PK = :pk AND begins_with(GSI1SK, :type)",
            FilterExpression="attribute_exists(claim_expires) AND claim_expires < :now",
            ExpressionAttributeValues=serialize(
                {
                    ":pk": f"EMBEDDING_STATUS#{_PENDING}",
                    ":type": f"{item_type}#",
                    ":now": now,
                }
            ),
        )
        return [(entity_class.from_item(i), ClaimState.from_item(i)) for i in items]
