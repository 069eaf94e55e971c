"""Lambda entry point: merges pending ChromaDB deltas into a new snapshot (SQS-triggered or direct).

Configuration comes from the environment and is checked at cold start; the logic lives in
receipt_label.pipeline. Required: DYNAMODB_TABLE_NAME, CHROMADB_BUCKET. Optional:
COMPACTION_LOCK_TTL_SECONDS (300), and the retention of old snapshots and applied deltas that runs
after each merge: COMPACTION_KEEP_SNAPSHOTS (3), COMPACTION_RETENTION_SECONDS (3600, at least 900),
COMPACTION_MAX_DELETES (1000 objects per invocation); see packages/receipt_label/README.md.
"""

from receipt_label.pipeline import compact
from receipt_label.runtime import lambda_entry

_entry = lambda_entry(
    "compact_embeddings", compact, required=("DYNAMODB_TABLE_NAME", "CHROMADB_BUCKET")
)


def handler(event, context):
    return _entry(event, context)
