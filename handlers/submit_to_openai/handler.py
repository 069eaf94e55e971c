"""Lambda entry point: submits one NDJSON request file to OpenAI's batch API.

Configuration comes from the environment and is checked at cold start; the logic lives in
receipt_label.pipeline.
"""

from receipt_label.pipeline import submit_batch
from receipt_label.runtime import lambda_entry

_entry = lambda_entry(
    "submit_to_openai",
    submit_batch,
    required=("DYNAMODB_TABLE_NAME", "BATCH_BUCKET", "OPENAI_API_KEY"),
)


def handler(event, context):
    return _entry(event, context)
