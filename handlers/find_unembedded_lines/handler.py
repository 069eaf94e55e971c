"""Lambda entry point: writes one NDJSON request file per receipt whose lines (or words) lack embeddings.

Configuration comes from the environment and is checked at cold start; the logic lives in
receipt_label.pipeline.
"""

from receipt_label.pipeline import find_unembedded
from receipt_label.runtime import lambda_entry

_entry = lambda_entry(
    "find_unembedded_lines",
    find_unembedded,
    required=("DYNAMODB_TABLE_NAME", "BATCH_BUCKET"),
)


def handler(event, context):
    return _entry(event, context)
