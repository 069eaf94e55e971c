"""Retention of ChromaDB snapshots and deltas in S3 over many compactions, against moto's server
with real chromadb: bounded storage, an old pointer's reader, the per-run budget."""

from __future__ import annotations

from receipt_dynamo import ReceiptDynamoClient
from receipt_label.chroma_store import (
    VectorRecord,
    download_directory,
    get_collection,
    open_database,
)
from receipt_label.compaction import (
    Compactor,
    RetentionPolicy,
    read_pointer_version,
    snapshot_prefix,
)
from receipt_label.compaction.snapshots import snapshot_manifest

from tests.pipeline.retention_support import (
    COLLECTION,
    HOUR,
    STEP,
    Clock,
    assert_latest_snapshot_answers,
    retention_compactor,
    stored,
    write_named_delta,
)


def test_many_rounds_stay_within_retention_and_the_latest_snapshot_has_every_line(
    aws, tmp_path
):
    clock = Clock()
    compactor = retention_compactor(aws, clock)
    written: list[VectorRecord] = []
    for round_number in range(1, 9):
        written += write_named_delta(aws, f"d{round_number:02d}")
        result = compactor.compact(COLLECTION)
        assert result.action == "compacted", result.to_json()
        assert result.retention.stopped is None, result.to_json()
        # Rounds 1.1 h apart, grace 2 h: snapshot k back goes once snapshot k-2 is 2.2 h old,
        # so the last four stay; a delta goes 2.2 h after the snapshot that applied it.
        assert stored(aws, "snapshot") == {
            f"compactor-{n:04d}"
            for n in range(max(1, round_number - 3), round_number + 1)
        }
        assert stored(aws, "delta") == {
            f"d{n:02d}" for n in range(max(1, round_number - 1), round_number + 1)
        }
        clock.advance(STEP)
    assert_latest_snapshot_answers(aws, tmp_path, written)


def test_a_reader_holding_an_old_pointer_loads_its_snapshot_within_the_grace_period(
    aws, tmp_path
):
    clock = Clock()
    compactor = retention_compactor(aws, clock)
    first = write_named_delta(aws, "d01")
    compactor.compact(COLLECTION)
    clock.advance(10 * HOUR)  # the snapshot stays current for a long time,
    held = read_pointer_version(aws.s3, aws.chromadb_bucket, COLLECTION)
    manifest = snapshot_manifest(aws.s3, aws.chromadb_bucket, COLLECTION, held.stamp)
    for name in ("d02", "d03", "d04"):  # then a reader fetches the pointer just before
        write_named_delta(aws, name)  # three quick compactions replace it.
        assert compactor.compact(COLLECTION).action == "compacted"
        clock.advance(60)

    # Made 10 h ago, superseded a few minutes ago: the reader still finds every file.
    local = tmp_path / "reader"
    download_directory(
        aws.s3,
        aws.chromadb_bucket,
        snapshot_prefix(COLLECTION, held.stamp),
        manifest,
        local,
    )
    with open_database(local) as client:
        assert set(get_collection(client, COLLECTION).get()["ids"]) == {
            r.id for r in first
        }

    clock.advance(2 * HOUR + 60)
    write_named_delta(aws, "d05")
    assert held.stamp in compactor.compact(COLLECTION).retention.deleted_snapshots
    assert held.stamp not in stored(aws, "snapshot")


def test_each_compaction_deletes_at_most_max_deletes_objects_and_the_next_goes_on(
    aws, tmp_path
):
    clock = Clock(offset=-10 * HOUR)
    written: list[VectorRecord] = []
    history = retention_compactor(aws, clock, owner="history")
    for name in ("d01", "d02", "d03", "d04", "d05"):
        written += write_named_delta(aws, name)
        history.compact(COLLECTION)
        clock.advance(STEP)
    # Hours later (S3's own timestamps old too): all but the last two snapshots may go.
    clock.offset = 3 * HOUR
    doomed_prefixes = [
        f"{COLLECTION}/snapshot/timestamped/history-0002/",
        f"{COLLECTION}/snapshot/timestamped/history-0003/",
        f"{COLLECTION}/delta/d04/",
        f"{COLLECTION}/delta/d05/",
    ]
    doomed = sum(len(aws.s3_keys(aws.chromadb_bucket, p)) for p in doomed_prefixes)
    budget = 7
    limited = Compactor(
        aws.s3,
        aws.chromadb_bucket,
        ReceiptDynamoClient(aws.table_name, aws.dynamodb),
        retention=RetentionPolicy(
            keep_snapshots=2, grace_seconds=2 * HOUR, max_deletes=budget
        ),
        clock=clock,
    )

    runs = []
    while not runs or runs[-1].stopped:
        assert len(runs) < doomed, "retention did not finish"
        runs.append(limited.compact(COLLECTION).retention)
        if len(runs) == 1:
            # Manifests go first: the half-deleted snapshot is incomplete, not corrupt.
            left = aws.s3_keys(aws.chromadb_bucket, doomed_prefixes[0])
            assert left and not any(k.endswith("/_snapshot.json") for k in left)

    assert [r.deleted_objects for r in runs] == [budget] * (doomed // budget) + (
        [doomed % budget] if doomed % budget else []
    )
    assert all("max_deletes" in r.stopped for r in runs[:-1])
    assert stored(aws, "snapshot") == {"history-0004", "history-0005"}
    assert stored(aws, "delta") == set()
    assert_latest_snapshot_answers(aws, tmp_path, written)
