"""Embedding batch summaries and their per-line results."""

from __future__ import annotations

from botocore.exceptions import ClientError

from receipt_dynamo.client.codec import (
    Page,
    serialize,
)
from receipt_dynamo.client.table import Table, is_conditional_failure
from receipt_dynamo.entities import (
    BatchStatus,
    BatchSummary,
    BatchType,
    EmbeddingBatchResult,
)


class BatchSummaries(Table):
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
            if is_conditional_failure(error):
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
            if is_conditional_failure(error):
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
        items, token = self._gsi1_page(
            f"STATUS#{BatchStatus(status).value}",
            f"BATCH_TYPE#{BatchType(batch_type).value}#",
            limit,
            next_token,
        )
        return Page([BatchSummary.from_item(i) for i in items], token)
