"""Retention of ChromaDB snapshots and deltas in S3, against moto's server with real chromadb.

Ages come from an injected clock: real time plus an offset the test moves (S3's LastModified, which
retention uses only for objects without a manifest, stays real time). Steps of 1.1 h against a
grace of 2 h keep every comparison far from its boundary.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

from receipt_dynamo import CompactionLock, ReceiptDynamoClient
from receipt_label.chroma_store import (
    VectorRecord,
    download_directory,
    get_collection,
    open_database,
)
from receipt_label.compaction import (
    DELTA_MANIFEST,
    Compactor,
    RetentionPolicy,
    download_snapshot,
    read_pointer_version,
    snapshot_prefix,
    write_delta,
)
from receipt_label.compaction.snapshots import snapshot_manifest

from tests.pipeline.fake_openai import fake_embedding
from tests.pipeline.fixtures import load_handler
from tests.pipeline.interleaving import (
    CallsBeforeFirst,
    PausingS3,
    join_all,
    session_clients,
    wait_for,
)

COLLECTION = "receipt_lines"
IMAGE = "5b1d9e0a-2c3f-4e5a-9b8c-7d6e5f4a3b2c"
HOUR = 3600.0
STEP = 1.1 * HOUR
POLICY = RetentionPolicy(keep_snapshots=2, grace_seconds=2 * HOUR, max_deletes=1000)


class Clock:
    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def _compactor(aws, clock: Clock, s3=None, owner: str | None = None) -> Compactor:
    stamps = itertools.count(1)
    return Compactor(
        s3 or aws.s3,
        aws.chromadb_bucket,
        ReceiptDynamoClient(aws.table_name, aws.dynamodb),
        owner=owner,
        stamp=lambda: f"{owner or 'compactor'}-{next(stamps):04d}",
        retention=POLICY,
        clock=clock,
    )


_RECEIPTS: dict[str, int] = {}


def _records(name: str, count: int = 3) -> list[VectorRecord]:
    receipt = _RECEIPTS.setdefault(name, len(_RECEIPTS) + 1)
    return [
        VectorRecord(
            f"IMAGE#{IMAGE}#RECEIPT#{receipt:05d}#LINE#{n:05d}",
            fake_embedding(f"receipt {name} line {n} total {n * 7}.{len(name)}"),
            f"receipt {name} line {n}",
            {"line_id": n},
        )
        for n in range(1, count + 1)
    ]


def _write(aws, name: str, s3=None) -> list[VectorRecord]:
    records = _records(name)
    write_delta(s3 or aws.s3, aws.chromadb_bucket, COLLECTION, name, records)
    return records


def _stored(aws, kind: str) -> set[str]:
    """The snapshot stamps or delta ids with any object left in S3."""
    root = {
        "snapshot": f"{COLLECTION}/snapshot/timestamped/",
        "delta": f"{COLLECTION}/delta/",
    }[kind]
    return {
        key.removeprefix(root).split("/", 1)[0]
        for key in aws.s3_keys(aws.chromadb_bucket, root)
    }


def _assert_latest_snapshot_answers(aws, tmp_path: Path, records: list[VectorRecord]):
    """Each line's own embedding finds that line first in the current snapshot."""
    local = tmp_path / f"latest-{len(list(tmp_path.iterdir()))}"
    download_snapshot(aws.s3, aws.chromadb_bucket, COLLECTION, local)
    with open_database(local) as client:
        collection = get_collection(client, COLLECTION)
        assert collection.count() == len(records)
        found = collection.query(
            query_embeddings=[r.embedding for r in records], n_results=1
        )
    assert [ids[0] for ids in found["ids"]] == [r.id for r in records]


def test_many_rounds_stay_within_retention_and_the_latest_snapshot_has_every_line(
    aws, tmp_path
):
    clock = Clock()
    compactor = _compactor(aws, clock)
    written: list[VectorRecord] = []
    for round_number in range(1, 9):
        written += _write(aws, f"d{round_number:02d}")
        result = compactor.compact(COLLECTION)
        assert result.action == "compacted", result.to_json()
        assert result.retention.stopped is None, result.to_json()
        # Rounds 1.1 h apart, grace 2 h: snapshot k back goes once snapshot k-2 is 2.2 h old,
        # so the last four stay; a delta goes 2.2 h after the snapshot that applied it.
        assert _stored(aws, "snapshot") == {
            f"compactor-{n:04d}"
            for n in range(max(1, round_number - 3), round_number + 1)
        }
        assert _stored(aws, "delta") == {
            f"d{n:02d}" for n in range(max(1, round_number - 1), round_number + 1)
        }
        clock.advance(STEP)
    _assert_latest_snapshot_answers(aws, tmp_path, written)


def test_a_reader_holding_an_old_pointer_loads_its_snapshot_within_the_grace_period(
    aws, tmp_path
):
    clock = Clock()
    compactor = _compactor(aws, clock)
    first = _write(aws, "d01")
    compactor.compact(COLLECTION)
    clock.advance(10 * HOUR)  # the snapshot stays current for a long time,
    held = read_pointer_version(aws.s3, aws.chromadb_bucket, COLLECTION)
    manifest = snapshot_manifest(aws.s3, aws.chromadb_bucket, COLLECTION, held.stamp)
    for name in ("d02", "d03", "d04"):  # then a reader fetches the pointer just before
        _write(aws, name)  # three quick compactions replace it.
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
    _write(aws, "d05")
    assert held.stamp in compactor.compact(COLLECTION).retention.deleted_snapshots
    assert held.stamp not in _stored(aws, "snapshot")


def test_a_delta_being_written_while_retention_runs_is_kept_and_merged_later(
    aws, tmp_path
):
    clock = Clock(offset=-10 * HOUR)  # history made long ago, so retention has work
    compactor = _compactor(aws, clock)
    written: list[VectorRecord] = []
    for name in ("d01", "d02", "d03", "d04"):
        written += _write(aws, name)
        compactor.compact(COLLECTION)
        clock.advance(STEP)
    clock.offset = (
        HOUR  # what S3 stamps now is an hour old by this clock: under the grace
    )
    paused = PausingS3(
        session_clients(aws)["s3"], lambda key: key.endswith("/" + DELTA_MANIFEST)
    )
    late = _records("late")
    errors: list[BaseException] = []

    def poll_writes_its_delta() -> None:
        try:
            write_delta(paused, aws.chromadb_bucket, COLLECTION, "late", late)
        except BaseException as error:  # noqa: BLE001 - asserted by the main thread
            errors.append(error)

    writer = threading.Thread(target=poll_writes_its_delta, name="poll")
    writer.start()
    wait_for(paused.reached, "the poll to have uploaded its delta's files")
    during = compactor.compact(COLLECTION)
    paused.resume.set()
    join_all([writer])

    assert not errors, errors
    assert during.action == "up_to_date"
    assert during.retention.deleted_snapshots and during.retention.deleted_deltas
    assert "late" not in during.retention.deleted_deltas
    after = compactor.compact(COLLECTION)
    assert (after.action, after.applied_now) == ("compacted", ["late"])
    _assert_latest_snapshot_answers(aws, tmp_path, written + late)


def test_a_redelivered_message_for_a_deleted_delta_is_acknowledged_and_nothing_is_lost(
    aws, tmp_path
):
    clock = Clock()
    compactor = _compactor(aws, clock)
    written = _write(aws, "d01")
    message = {
        "messageId": "m-d01",
        "receiptHandle": "h",
        "eventSource": "aws:sqs",
        "body": '{"collection": "receipt_lines", "delta_key": "receipt_lines/delta/d01/"}',
    }
    for name in ("d02", "d03", "d04"):
        compactor.compact(COLLECTION)
        clock.advance(STEP)
        written += _write(aws, name)
    compactor.compact(COLLECTION)
    assert "d01" not in _stored(aws, "delta")

    redelivered = load_handler("compact_embeddings").handler(
        {"Records": [message]}, None
    )

    assert redelivered == {"batchItemFailures": []}
    _assert_latest_snapshot_answers(aws, tmp_path, written)


def test_retention_stops_when_a_newer_compaction_has_moved_the_pointer(aws, tmp_path):
    clock = Clock(offset=-10 * HOUR)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    history = _compactor(aws, clock, owner="history")
    written: list[VectorRecord] = []
    for name in ("d01", "d02", "d03", "d04"):
        written += _write(aws, name)
        history.compact(COLLECTION)
        clock.advance(STEP)
    clock.offset = 0.0
    newer_results = []

    def lease_runs_out_and_a_newer_compaction_runs() -> None:
        # The stale run has chosen what to delete and refreshed its lock; before it compares
        # the pointer's ETag its lease runs out, and a newer compaction merges a new delta and
        # does its own retention.
        dynamo.put(CompactionLock(COLLECTION, "stale", expires=0.0, heartbeat=0.0))
        written.extend(_write(aws, "d05"))
        newer = _compactor(aws, clock, s3=session_clients(aws)["s3"], owner="newer")
        newer_results.append(newer.compact(COLLECTION))

    _write(aws, "d-stale")
    written += _records("d-stale")
    hooked = CallsBeforeFirst(
        session_clients(aws)["s3"],
        "head_object",
        lease_runs_out_and_a_newer_compaction_runs,
    )
    stale = _compactor(aws, clock, s3=hooked, owner="stale").compact(COLLECTION)

    assert hooked.called
    assert stale.action == "compacted" and stale.applied_now == ["d-stale"]
    assert stale.retention.deleted_objects == 0
    assert "no longer names stale-0001" in stale.retention.stopped
    (newer,) = newer_results
    assert newer.action == "compacted" and newer.applied_now == ["d05"]
    assert newer.retention.deleted_snapshots
    _assert_latest_snapshot_answers(aws, tmp_path, written)


def test_each_compaction_deletes_at_most_max_deletes_objects_and_the_next_goes_on(
    aws, tmp_path
):
    clock = Clock(offset=-10 * HOUR)
    written: list[VectorRecord] = []
    history = _compactor(aws, clock, owner="history")
    for name in ("d01", "d02", "d03", "d04", "d05"):
        written += _write(aws, name)
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
    assert _stored(aws, "snapshot") == {"history-0004", "history-0005"}
    assert _stored(aws, "delta") == set()
    _assert_latest_snapshot_answers(aws, tmp_path, written)
