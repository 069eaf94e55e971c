"""Compaction against moto S3 and DynamoDB with real chromadb: incomplete and corrupt inputs, fencing."""

import pytest
from receipt_dynamo import ReceiptDynamoClient
from receipt_label.chroma_store import CorruptCopyError, VectorRecord
from receipt_label.compaction import (
    Compactor,
    LockLost,
    current_snapshot,
    delta_prefix,
    parse_delta_key,
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


def test_a_corrupt_delta_fails_the_run_and_keeps_the_pointer(aws, compactor):
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "d1", _records(1, 2))
    assert compactor.compact("receipt_lines").action == "compacted"
    before = read_pointer(aws.s3, aws.chromadb_bucket, "receipt_lines")
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "d2", _records(2, 2))
    aws.s3.put_object(
        Bucket=aws.chromadb_bucket,
        Key=delta_prefix("receipt_lines", "d2") + "chroma.sqlite3",
        Body=b"x",
    )

    with pytest.raises(CorruptCopyError, match="does not match its manifest"):
        compactor.compact("receipt_lines")

    assert read_pointer(aws.s3, aws.chromadb_bucket, "receipt_lines") == before
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

    with pytest.raises(LockLost, match="snapshot stalled-run unused"):
        stalled.compact("receipt_words")

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
