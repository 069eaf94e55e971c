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
from receipt_dynamo.status_transitions import (
    EMBEDDING_STATUS_TRANSITIONS,
    embedding_status_sources,
)

__all__ = [
    "CUSTOM_ID_FORM",
    "EMBEDDING_STATUS_TRANSITIONS",
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
    "embedding_status_sources",
    "parse_custom_id",
    "target_of",
]
