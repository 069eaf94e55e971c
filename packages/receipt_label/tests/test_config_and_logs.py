"""Configuration from the environment and the structured, secret-free logs."""

import json
import logging

import pytest
from receipt_label.config import load_config
from receipt_label.errors import ConfigError
from receipt_label.logs import get_logger, log, register_secret

FULL = {
    "DYNAMODB_TABLE_NAME": "receipts",
    "CHROMADB_BUCKET": "chroma",
    "BATCH_BUCKET": "batches",
    "COMPACTION_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/compaction",
    "OPENAI_API_KEY": "sk-secret-value-123",
}


def test_config_reads_every_setting_and_hides_the_key_from_repr():
    config = load_config(
        FULL,
        {
            **FULL,
            "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
            "COMPACTION_LOCK_TTL_SECONDS": "30",
            "SUBMIT_CLAIM_LEASE_SECONDS": "45",
            "COMPACTION_KEEP_SNAPSHOTS": "5",
            "COMPACTION_RETENTION_SECONDS": "7200",
            "COMPACTION_MAX_DELETES": "50",
        },
    )
    assert (
        config.dynamodb_table_name,
        config.openai_base_url,
        config.compaction_lock_ttl_seconds,
        config.submit_claim_lease_seconds,
        config.compaction_keep_snapshots,
        config.compaction_retention_seconds,
        config.compaction_max_deletes,
    ) == ("receipts", "http://127.0.0.1:1/v1", 30.0, 45.0, 5, 7200.0, 50)
    defaults = load_config(FULL, FULL)
    assert (
        defaults.submit_claim_lease_seconds,
        defaults.compaction_keep_snapshots,
        defaults.compaction_retention_seconds,
        defaults.compaction_max_deletes,
    ) == (1200.0, 3, 3600.0, 1000)
    assert "sk-secret" not in repr(config)


def test_one_error_names_every_missing_variable():
    environ = {
        k: v for k, v in FULL.items() if k not in ("BATCH_BUCKET", "OPENAI_API_KEY")
    }
    with pytest.raises(ConfigError) as raised:
        load_config(FULL, environ)
    assert "BATCH_BUCKET (the S3 bucket that holds the NDJSON batch inputs)" in str(
        raised.value
    )
    assert "OPENAI_API_KEY" in str(raised.value)
    assert "DYNAMODB_TABLE_NAME" not in str(raised.value)
    load_config(
        ["DYNAMODB_TABLE_NAME"], environ
    )  # a handler asks only for what it uses


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"COMPACTION_QUEUE_URL": "compaction"}, "must be an SQS queue URL"),
        (
            {"COMPACTION_LOCK_TTL_SECONDS": "forever"},
            "COMPACTION_LOCK_TTL_SECONDS must be a number",
        ),
        ({"COMPACTION_LOCK_TTL_SECONDS": "0"}, "from 1 to 900"),
        (
            {"SUBMIT_CLAIM_LEASE_SECONDS": "soon"},
            "SUBMIT_CLAIM_LEASE_SECONDS must be a number of seconds from 1 to 86400; got 'soon'",
        ),
        (
            {"COMPACTION_KEEP_SNAPSHOTS": "1"},
            "COMPACTION_KEEP_SNAPSHOTS must be a whole number from 2 to 1000; got '1'",
        ),
        (
            {"COMPACTION_RETENTION_SECONDS": "60"},
            "COMPACTION_RETENTION_SECONDS must be a number of seconds from 900 to",
        ),
        ({"COMPACTION_MAX_DELETES": "lots"}, "COMPACTION_MAX_DELETES must be a whole"),
        (
            {"DYNAMODB_TABLE_NAME": "   "},
            "missing required environment variable: DYNAMODB_TABLE_NAME",
        ),
    ],
)
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(FULL, {**FULL, **override})


def test_logs_are_json_lines_without_secrets(capsys):
    logger = get_logger("receipt_label.test")
    register_secret("sk-secret-value-123")

    log(
        logger,
        logging.INFO,
        "calling with sk-secret-value-123",
        batch_id="b-1",
        api_key="anything",
        s3_key="k",
    )

    (line,) = capsys.readouterr().out.splitlines()
    entry = json.loads(line)
    assert entry == {
        "level": "INFO",
        "logger": "receipt_label.test",
        "message": "calling with [redacted]",
        "batch_id": "b-1",
        "api_key": "[redacted]",
        "s3_key": "k",
    }
