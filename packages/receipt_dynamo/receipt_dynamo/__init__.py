"""Receipts, their words and lines, and the embedding pipeline's bookkeeping in one DynamoDB table."""

from receipt_dynamo.claims import ClaimState, EmbeddingClaims
from receipt_dynamo.client import Page, ReceiptDynamoClient, UnprocessedItemsError
from receipt_dynamo.entities import (
    CUSTOM_ID_FORM,
    BatchStatus,
    BatchSummary,
    BatchType,
    BoundingBox,
    CompactionLock,
    EmbeddingBatchResult,
    EmbeddingStatus,
    EmbeddingTarget,
    EntityError,
    ReceiptLine,
    ReceiptMetadata,
    ReceiptWord,
    parse_custom_id,
    target_of,
)
from receipt_dynamo.schema import create_table

__all__ = [
    "CUSTOM_ID_FORM",
    "BatchStatus",
    "BatchSummary",
    "BatchType",
    "BoundingBox",
    "ClaimState",
    "CompactionLock",
    "EmbeddingBatchResult",
    "EmbeddingClaims",
    "EmbeddingStatus",
    "EmbeddingTarget",
    "EntityError",
    "Page",
    "ReceiptDynamoClient",
    "ReceiptLine",
    "ReceiptMetadata",
    "ReceiptWord",
    "UnprocessedItemsError",
    "create_table",
    "parse_custom_id",
    "target_of",
]
