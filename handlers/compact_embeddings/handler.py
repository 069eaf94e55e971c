"""Lambda entry point: merges pending ChromaDB deltas into a new snapshot (SQS-triggered or direct).

Configuration comes from the environment and is checked at cold start; the logic lives in
receipt_label.pipeline.
"""

from receipt_label.pipeline import compact
from receipt_label.runtime import lambda_entry

_entry = lambda_entry(
    "compact_embeddings", compact, required=("DYNAMODB_TABLE_NAME", "CHROMADB_BUCKET")
)


def handler(event, context):
    return _entry(event, context)
