"""Retention racing other work, reproduced with interleaving hooks against moto's server and real
chromadb: a delta still being written, a redelivered message, a stale compaction fenced off."""

from __future__ import annotations

import threading

from receipt_dynamo import CompactionLock, ReceiptDynamoClient
from receipt_label.chroma_store import VectorRecord
from receipt_label.compaction import DELTA_MANIFEST, write_delta

from tests.pipeline.fixtures import load_handler
from tests.pipeline.interleaving import (
    CallsBeforeFirst,
    PausingS3,
    join_all,
    session_clients,
    wait_for,
)
from tests.pipeline.retention_support import (
    COLLECTION,
    HOUR,
    STEP,
    Clock,
    assert_latest_snapshot_answers,
    named_records,
    retention_compactor,
    stored,
    write_named_delta,
)


def test_a_delta_being_written_while_retention_runs_is_kept_and_merged_later(
    aws, tmp_path
):
    clock = Clock(offset=-10 * HOUR)  # history made long ago, so retention has work
    compactor = retention_compactor(aws, clock)
    written: list[VectorRecord] = []
    for name in ("d01", "d02", "d03", "d04"):
        written += write_named_delta(aws, name)
        compactor.compact(COLLECTION)
        clock.advance(STEP)
    clock.offset = (
        HOUR  # what S3 stamps now is an hour old by this clock: under the grace
    )
    paused = PausingS3(
        session_clients(aws)["s3"], lambda key: key.endswith("/" + DELTA_MANIFEST)
    )
    late = named_records("late")
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
    assert_latest_snapshot_answers(aws, tmp_path, written + late)


def test_a_redelivered_message_for_a_deleted_delta_is_acknowledged_and_nothing_is_lost(
    aws, tmp_path
):
    clock = Clock()
    compactor = retention_compactor(aws, clock)
    written = write_named_delta(aws, "d01")
    message = {
        "messageId": "m-d01",
        "receiptHandle": "h",
        "eventSource": "aws:sqs",
        "body": '{"collection": "receipt_lines", "delta_key": "receipt_lines/delta/d01/"}',
    }
    for name in ("d02", "d03", "d04"):
        compactor.compact(COLLECTION)
        clock.advance(STEP)
        written += write_named_delta(aws, name)
    compactor.compact(COLLECTION)
    assert "d01" not in stored(aws, "delta")

    redelivered = load_handler("compact_embeddings").handler(
        {"Records": [message]}, None
    )

    assert redelivered == {"batchItemFailures": []}
    assert_latest_snapshot_answers(aws, tmp_path, written)


def test_retention_stops_when_a_newer_compaction_has_moved_the_pointer(aws, tmp_path):
    clock = Clock(offset=-10 * HOUR)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    history = retention_compactor(aws, clock, owner="history")
    written: list[VectorRecord] = []
    for name in ("d01", "d02", "d03", "d04"):
        written += write_named_delta(aws, name)
        history.compact(COLLECTION)
        clock.advance(STEP)
    clock.offset = 0.0
    newer_results = []

    def lease_runs_out_and_a_newer_compaction_runs() -> None:
        # The stale run has chosen what to delete and refreshed its lock; before it compares
        # the pointer's ETag its lease runs out, and a newer compaction merges a new delta and
        # does its own retention.
        dynamo.put(CompactionLock(COLLECTION, "stale", expires=0.0, heartbeat=0.0))
        written.extend(write_named_delta(aws, "d05"))
        newer = retention_compactor(
            aws, clock, s3=session_clients(aws)["s3"], owner="newer"
        )
        newer_results.append(newer.compact(COLLECTION))

    write_named_delta(aws, "d-stale")
    written += named_records("d-stale")
    hooked = CallsBeforeFirst(
        session_clients(aws)["s3"],
        "head_object",
        lease_runs_out_and_a_newer_compaction_runs,
    )
    stale = retention_compactor(aws, clock, s3=hooked, owner="stale").compact(
        COLLECTION
    )

    assert hooked.called
    assert stale.action == "compacted" and stale.applied_now == ["d-stale"]
    assert stale.retention.deleted_objects == 0
    assert "no longer names stale-0001" in stale.retention.stopped
    (newer,) = newer_results
    assert newer.action == "compacted" and newer.applied_now == ["d05"]
    assert newer.retention.deleted_snapshots
    assert_latest_snapshot_answers(aws, tmp_path, written)
