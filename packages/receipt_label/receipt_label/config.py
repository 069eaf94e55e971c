"""Settings from the environment, validated once at cold start."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from receipt_label.errors import ConfigError

REQUIRED_SETTINGS = {
    "DYNAMODB_TABLE_NAME": "the name of the receipts DynamoDB table",
    "CHROMADB_BUCKET": "the S3 bucket that holds ChromaDB deltas and snapshots",
    "BATCH_BUCKET": "the S3 bucket that holds the NDJSON batch inputs",
    "COMPACTION_QUEUE_URL": "the URL of the SQS queue that triggers compaction",
    "OPENAI_API_KEY": "the OpenAI API key",
}


@dataclass(frozen=True)
class Config:
    dynamodb_table_name: str = ""
    chromadb_bucket: str = ""
    batch_bucket: str = ""
    compaction_queue_url: str = ""
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str | None = None
    aws_endpoint_url: str | None = None
    compaction_lock_ttl_seconds: float = 300.0
    # Longer than a Lambda can run (15 min), so a claim expires only once its submitter is gone.
    submit_claim_lease_seconds: float = 1200.0
    # Retention of ChromaDB snapshots and deltas (receipt_label.compaction.retention).
    compaction_keep_snapshots: int = 3
    # At least as long as a Lambda can run, so no reader or writer of an object is still at it.
    compaction_retention_seconds: float = 3600.0
    compaction_max_deletes: int = 1000


def load_config(
    required: Iterable[str], environ: Mapping[str, str] | None = None
) -> Config:
    """Reads the settings; names every missing required variable in one error."""
    environ = os.environ if environ is None else environ
    required = list(required)
    unknown = [name for name in required if name not in REQUIRED_SETTINGS]
    if unknown:
        raise ValueError(
            f"unknown required settings {unknown}; known: {sorted(REQUIRED_SETTINGS)}"
        )
    missing = [name for name in required if not environ.get(name, "").strip()]
    if missing:
        described = "; ".join(f"{name} ({REQUIRED_SETTINGS[name]})" for name in missing)
        noun = "variable" if len(missing) == 1 else "variables"
        raise ConfigError(
            f"missing required environment {noun}: {described}. Set it in the function's configuration."
        )
    queue_url = environ.get("COMPACTION_QUEUE_URL", "").strip()
    if queue_url and not queue_url.startswith(("https://", "http://")):
        raise ConfigError(
            f"COMPACTION_QUEUE_URL must be an SQS queue URL (https://...); got {queue_url!r}"
        )
    ttl_text = environ.get("COMPACTION_LOCK_TTL_SECONDS", "").strip() or "300"
    try:
        ttl = float(ttl_text)
    except ValueError:
        ttl = -1.0
    if not 1 <= ttl <= 900:
        raise ConfigError(
            f"COMPACTION_LOCK_TTL_SECONDS must be a number of seconds from 1 to 900; got {ttl_text!r}"
        )
    lease = _seconds(environ, "SUBMIT_CLAIM_LEASE_SECONDS", "1200", 1, 86400)
    keep = _count(environ, "COMPACTION_KEEP_SNAPSHOTS", 3, 2, 1000)
    grace = _seconds(environ, "COMPACTION_RETENTION_SECONDS", "3600", 900, 31622400)
    max_deletes = _count(environ, "COMPACTION_MAX_DELETES", 1000, 1, 100000)
    return Config(
        dynamodb_table_name=environ.get("DYNAMODB_TABLE_NAME", "").strip(),
        chromadb_bucket=environ.get("CHROMADB_BUCKET", "").strip(),
        batch_bucket=environ.get("BATCH_BUCKET", "").strip(),
        compaction_queue_url=queue_url,
        openai_api_key=environ.get("OPENAI_API_KEY", "").strip(),
        openai_base_url=environ.get("OPENAI_BASE_URL", "").strip() or None,
        aws_endpoint_url=environ.get("AWS_ENDPOINT_URL", "").strip() or None,
        compaction_lock_ttl_seconds=ttl,
        submit_claim_lease_seconds=lease,
        compaction_keep_snapshots=keep,
        compaction_retention_seconds=grace,
        compaction_max_deletes=max_deletes,
    )


def _seconds(
    environ: Mapping[str, str], name: str, default: str, low: float, high: float
) -> float:
    text = environ.get(name, "").strip() or default
    try:
        value = float(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(
            f"{name} must be a number of seconds from {low:g} to {high:g}; got {text!r}"
        )
    return value


def _count(
    environ: Mapping[str, str], name: str, default: int, low: int, high: int
) -> int:
    text = environ.get(name, "").strip() or str(default)
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(
            f"{name} must be a whole number from {low} to {high}; got {text!r}"
        )
    return value
