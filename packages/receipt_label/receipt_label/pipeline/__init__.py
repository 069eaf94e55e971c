"""The six steps of the embedding pipeline, one function per Lambda handler.

Each takes the Lambda event (already JSON-decoded) and a Runtime, validates the event fully
before changing anything, and returns a JSON-serializable result. Bad input raises
InvalidInput, which the entry wrapper turns into an error result.
"""

from receipt_label.pipeline.compact import compact
from receipt_label.pipeline.find import find_unembedded
from receipt_label.pipeline.list_batches import list_pending_batches
from receipt_label.pipeline.poll import poll_embeddings
from receipt_label.pipeline.submit import submit_batch

__all__ = [
    "compact",
    "find_unembedded",
    "list_pending_batches",
    "poll_embeddings",
    "submit_batch",
]
