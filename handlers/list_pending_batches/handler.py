"""Lambda entry point: lists the batches of one type still waiting at OpenAI.

Configuration comes from the environment and is checked at cold start; the logic lives in
receipt_label.pipeline.
"""

from receipt_label.pipeline import list_pending_batches
from receipt_label.runtime import lambda_entry

_entry = lambda_entry(
    "list_pending_batches", list_pending_batches, required=("DYNAMODB_TABLE_NAME",)
)


def handler(event, context):
    return _entry(event, context)
