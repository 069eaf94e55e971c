"""Lambda entry point: polls one line-embedding batch and stores its vectors as a ChromaDB delta.

Configuration comes from the environment and is checked at cold start; the logic lives in
receipt_label.pipeline.
"""

from receipt_dynamo import BatchType
from receipt_label.pipeline import poll_embeddings
from receipt_label.runtime import lambda_entry

_entry = lambda_entry(
    "poll_line_embeddings",
    lambda event, runtime: poll_embeddings(event, runtime, BatchType.LINE_EMBEDDING),
    required=(
        "DYNAMODB_TABLE_NAME",
        "CHROMADB_BUCKET",
        "COMPACTION_QUEUE_URL",
        "OPENAI_API_KEY",
    ),
)


def handler(event, context):
    return _entry(event, context)
