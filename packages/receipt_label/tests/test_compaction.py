"""Compaction against moto S3 and DynamoDB with real chromadb: incomplete and corrupt inputs, fencing."""

import json

import pytest
from receipt_dynamo import ReceiptDynamoClient
from receipt_label.chroma_store import VectorRecord
from receipt_label.compaction import (
    Compactor,
    current_snapshot,
    delta_prefix,
    parse_delta_key,
    quarantine_key,
    read_pointer,
    write_delta,
)

IMAGE = "3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f"


def _records(receipt_id, count):
    return [
        VectorRecord(
            f"IMAGE#{IMAGE}#RECEIPT#{receipt_id:05d}#LINE#{n:05d}",
            [float(n), float(receipt_id), 1.0],
            f"line {n}",
            {"line_id": n},
        )
        for n in range(1, count + 1)
    ]


@pytest.fixture
def compactor(aws):
    return Compactor(
        aws.s3,
        aws.chromadb_bucket,
        ReceiptDynamoClient(aws.table_name, aws.dynamodb),
        lock_ttl_seconds=30,
    )


def test_nothing_to_merge_leaves_no_snapshot(aws, compactor):
    result = compactor.compact("receipt_lines")
    assert (result.action, result.snapshot) == ("up_to_date", None)
    assert aws.s3_keys(aws.chromadb_bucket) == []


def test_a_delta_without_its_manifest_is_not_merged_yet(aws, compactor):
    write_delta(
        aws.s3, aws.chromadb_bucket, "receipt_lines", "complete", _records(1, 2)
    )
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "partial", _records(2, 2))
    aws.s3.delete_object(
        Bucket=aws.chromadb_bucket,
        Key=delta_prefix("receipt_lines", "partial") + "_delta.json",
    )

    result = compactor.compact("receipt_lines")

    assert (result.action, result.applied_now, result.vector_count) == (
        "compacted",
        ["complete"],
        2,
    )
    assert compactor.compact("receipt_lines").action == "up_to_date"
    assert compactor.dynamo.get_lock("receipt_lines") is None


def _spoil(aws, delta_id, how):
    prefix = delta_prefix("receipt_lines", delta_id)
    if how == "sha mismatch":
        aws.s3.put_object(
            Bucket=aws.chromadb_bucket, Key=prefix + "chroma.sqlite3", Body=b"x"
        )
    elif how == "missing file":
        aws.s3.delete_object(Bucket=aws.chromadb_bucket, Key=prefix + "chroma.sqlite3")
    else:
        aws.s3.put_object(
            Bucket=aws.chromadb_bucket, Key=prefix + "_delta.json", Body=b"{not json"
        )


@pytest.mark.parametrize("how", ["sha mismatch", "missing file", "bad manifest"])
def test_an_unreadable_delta_is_quarantined_and_the_others_are_applied(
    aws, compactor, how
):
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "d1", _records(1, 2))
    assert compactor.compact("receipt_lines").action == "compacted"
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "d2", _records(2, 2))
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "d3", _records(3, 3))
    _spoil(aws, "d2", how)

    result = compactor.compact("receipt_lines")

    assert (result.action, result.applied_now, result.vector_count) == (
        "compacted",
        ["d3"],
        5,
    )
    assert list(result.quarantined_now) == ["d2"]
    assert result.to_json()["quarantined_now"][0]["delta_id"] == "d2"
    record = json.loads(
        aws.s3.get_object(
            Bucket=aws.chromadb_bucket, Key=quarantine_key("receipt_lines", "d2")
        )["Body"].read()
    )
    assert record["delta_id"] == "d2" and record["reason"]
    # Reported once, then skipped: never retried, never blocking what comes after it.
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "d4", _records(4, 1))
    again = compactor.compact("receipt_lines")
    assert (again.action, again.applied_now, again.quarantined_now) == (
        "compacted",
        ["d4"],
        {},
    )
    assert "d2" in again.quarantined and "d2" not in again.applied_deltas
    assert compactor.compact("receipt_lines").action == "up_to_date"
    assert compactor.dynamo.get_lock("receipt_lines") is None


def test_a_compactor_that_lost_its_lock_does_not_move_the_pointer(aws):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_words", "d1", _records(1, 1))

    def stamp_while_someone_takes_the_lock_over():
        # As if this run stalled past its TTL: another compactor takes the expired lock.
        assert dynamo.acquire_lock("receipt_words", "intruder", 30, now=10**10)
        return "stalled-run"

    stalled = Compactor(
        aws.s3,
        aws.chromadb_bucket,
        dynamo,
        stamp=stamp_while_someone_takes_the_lock_over,
    )

    result = stalled.compact("receipt_words")

    assert result.action == "lost"
    assert "snapshot stalled-run unused" in result.detail
    assert read_pointer(aws.s3, aws.chromadb_bucket, "receipt_words") is None
    assert current_snapshot(aws.s3, aws.chromadb_bucket, "receipt_words") == (
        None,
        {"applied_deltas": [], "files": [], "vector_count": 0},
    )
    assert dynamo.get_lock("receipt_words").owner == "intruder"


def test_delta_keys_must_name_a_delta_of_the_collection():
    assert parse_delta_key("receipt_lines", "receipt_lines/delta/abc-1/") == "abc-1"
    for bad in (
        "receipt_words/delta/abc/",
        "receipt_lines/delta/abc",
        "receipt_lines/delta/../x/",
        "receipt_lines/delta//",
    ):
        with pytest.raises(
            ValueError, match="is not of the form receipt_lines/delta/<delta id>/"
        ):
            parse_delta_key("receipt_lines", bad)
