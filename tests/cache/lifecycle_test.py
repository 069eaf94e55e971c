"""tools/cache/lifecycle.py against moto's S3 server: the rules are written, read back and kept
apart from rules someone else set."""

from __future__ import annotations

import pytest
from harness import TEST_CREDENTIALS

from tools.cache import lifecycle


@pytest.fixture
def bucket(moto_s3, monkeypatch, request):
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    name = f"lifecycle-{request.node.name.replace('_', '-')[:40].lower().strip('-')}"
    moto_s3.client.create_bucket(Bucket=name)
    return name


def run(moto_s3, bucket, *args) -> int:
    return lifecycle.main(
        ["--bucket", bucket, "--endpoint-url", moto_s3.endpoint_url, *args]
    )


def stored_rules(moto_s3, bucket) -> list[dict]:
    rules = moto_s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return sorted(rules, key=lambda rule: rule["ID"])


def test_cache_bucket_rules(moto_s3, bucket):
    assert run(moto_s3, bucket, "--kind=cache", "--prefix=team-cache") == 0
    assert stored_rules(moto_s3, bucket) == [
        {
            "ID": "repo-lifecycle/abort-incomplete-multipart-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
        {
            "ID": "repo-lifecycle/expire-cache-objects",
            "Filter": {"Prefix": "team-cache/"},
            "Status": "Enabled",
            "Expiration": {"Days": 30},
        },
    ]


def test_chromadb_bucket_expires_only_quarantine_records(moto_s3, bucket):
    assert run(moto_s3, bucket, "--kind=chromadb", "--expire-days=120") == 0
    expiring = {
        rule["Filter"]["Prefix"]: rule["Expiration"]["Days"]
        for rule in stored_rules(moto_s3, bucket)
        if "Expiration" in rule
    }
    assert expiring == {
        "receipt_lines/quarantine/": 120,
        "receipt_words/quarantine/": 120,
    }


def test_batch_bucket_expires_request_files(moto_s3, bucket):
    assert run(moto_s3, bucket, "--kind=batch") == 0
    expiring = {
        rule["Filter"]["Prefix"]: rule["Expiration"]["Days"]
        for rule in stored_rules(moto_s3, bucket)
        if "Expiration" in rule
    }
    assert expiring == {"embedding-requests/": 30}


def test_rules_set_by_others_are_kept_and_reapplying_changes_nothing(moto_s3, bucket):
    theirs = {
        "ID": "logs-to-glacier",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}],
    }
    moto_s3.client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]}
    )
    assert run(moto_s3, bucket, "--kind=cache") == 0
    first = stored_rules(moto_s3, bucket)
    assert run(moto_s3, bucket, "--kind=cache") == 0
    assert stored_rules(moto_s3, bucket) == first
    assert [rule["ID"] for rule in first] == [
        "logs-to-glacier",
        "repo-lifecycle/abort-incomplete-multipart-uploads",
        "repo-lifecycle/expire-cache-objects",
    ]
    assert first[0]["Filter"] == {"Prefix": "logs/"}


def test_dry_run_changes_nothing(moto_s3, bucket, capsys):
    assert run(moto_s3, bucket, "--kind=batch", "--dry-run") == 0
    assert "would set" in capsys.readouterr().out
    with pytest.raises(moto_s3.client.exceptions.ClientError, match="NoSuchLifecycle"):
        moto_s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)


def test_missing_bucket_is_a_clear_error(moto_s3, bucket, capsys):
    assert run(moto_s3, "no-such-bucket-anywhere", "--kind=cache") == 1
    assert "bucket 'no-such-bucket-anywhere' does not exist" in capsys.readouterr().err


def test_days_must_be_whole_and_positive(moto_s3, bucket, capsys):
    with pytest.raises(SystemExit):
        run(moto_s3, bucket, "--kind=cache", "--expire-days=0")
    assert "is not a number of days >= 1" in capsys.readouterr().err
