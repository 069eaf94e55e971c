"""The queries and writes the pipeline needs against the single receipts table, one module per
kind of item: receipts.py, batches.py, locks.py, over table.py (generic reads and writes) and
codec.py (attribute values, page tokens)."""

from receipt_dynamo.client.batches import BatchSummaries
from receipt_dynamo.client.codec import Page, deserialize, serialize
from receipt_dynamo.client.locks import CompactionLocks
from receipt_dynamo.client.receipts import ReceiptQueries
from receipt_dynamo.client.table import UnprocessedItemsError


class ReceiptDynamoClient(ReceiptQueries, BatchSummaries, CompactionLocks):
    """Every query and write of the pipeline on one table."""


__all__ = [
    "Page",
    "ReceiptDynamoClient",
    "UnprocessedItemsError",
    "deserialize",
    "serialize",
]
