"""Interleavings of polls and compactions that once lost or poisoned data, reproduced with hooks."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from openai import OpenAI
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    BatchType,
    CompactionLock,
    EmbeddingStatus,
    ReceiptDynamoClient,
    target_of,
)
from receipt_label.chroma_store import VectorRecord
from receipt_label.compaction import (
    DELTA_MANIFEST,
    Compactor,
    pointer_key,
    read_pointer,
    write_delta,
)
from receipt_label.pipeline import poll_embeddings

from tests.pipeline.fake_openai import API_KEY, fake_embedding
from tests.pipeline.fixtures import load_handler, read_snapshot, sqs_event
from tests.pipeline.interleaving import (
    CallsBeforePut,
    PausingS3,
    join_all,
    session_clients,
    thread_runtime,
    wait_for,
)
from tests.pipeline.receipts import SPROUTS_IMAGE, seed

COLLECTION = "receipt_lines"


def _submit_sprouts_lines(dynamo: ReceiptDynamoClient) -> dict:
    seed(dynamo)
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    sprouts = next(b for b in found if b["image_id"] == SPROUTS_IMAGE)
    return load_handler("submit_to_openai").handler(sprouts, None)


def _records(name: str, receipt_id: int, count: int) -> list[VectorRecord]:
    return [
        VectorRecord(
            f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#{receipt_id:05d}#LINE#{n:05d}",
            fake_embedding(f"{name} {n}"),
            f"{name} {n}",
            {"line_id": n},
        )
        for n in range(1, count + 1)
    ]


def test_overlapping_polls_of_one_batch_leave_every_delta_readable(
    aws, fake_openai, tmp_path
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    submitted = _submit_sprouts_lines(dynamo)
    event = {k: submitted[k] for k in ("batch_id", "openai_batch_id")}
    # The first poll stops just before its delta's manifest; the second poll runs start to end.
    paused = PausingS3(
        session_clients(aws)["s3"], lambda key: key.endswith("/" + DELTA_MANIFEST)
    )
    runtimes = [thread_runtime(aws, lambda _: paused), thread_runtime(aws)]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def poll(number: int) -> None:
        try:
            results[number] = poll_embeddings(
                event, runtimes[number], BatchType.LINE_EMBEDDING
            )
        except BaseException as error:  # noqa: BLE001 - asserted by the main thread
            errors.append(error)

    first = threading.Thread(target=poll, args=(0,), name="first-poll")
    first.start()
    wait_for(paused.reached, "the first poll to reach its delta manifest")
    second = threading.Thread(target=poll, args=(1,), name="second-poll")
    second.start()
    join_all([second])
    paused.resume.set()
    join_all([first])

    assert not errors, errors
    assert {r["action"] for r in results.values()} == {"processed"}
    messages = aws.receive_all()
    assert len(messages) == 2
    result = load_handler("compact_embeddings").handler(sqs_event(messages), None)
    assert result == {"batchItemFailures": []}
    sent = {
        line["custom_id"]
        for line in fake_openai.input_lines(submitted["openai_batch_id"])
    }
    _, records = read_snapshot(aws, COLLECTION, tmp_path)
    assert set(records) == sent


@pytest.mark.parametrize("first_pointer", [False, True], ids=["moved", "first"])
def test_a_stale_lock_holder_cannot_move_the_pointer_back(aws, tmp_path, first_pointer):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    expected = set()
    if not first_pointer:
        expected |= {r.id for r in _records("d0", 1, 2)}
        write_delta(aws.s3, aws.chromadb_bucket, COLLECTION, "d0", _records("d0", 1, 2))
        assert Compactor(aws.s3, aws.chromadb_bucket, dynamo).compact(
            COLLECTION
        ).action == ("compacted")
    write_delta(aws.s3, aws.chromadb_bucket, COLLECTION, "d1", _records("d1", 2, 2))
    clients = session_clients(aws)
    stalled_s3 = PausingS3(clients["s3"], lambda key: key == pointer_key(COLLECTION))
    stale = Compactor(
        stalled_s3,
        aws.chromadb_bucket,
        ReceiptDynamoClient(aws.table_name, clients["dynamodb"]),
        owner="stale",
    )
    outcome: list = []
    stale_thread = threading.Thread(
        target=lambda: outcome.append(stale.compact(COLLECTION)), name="stale"
    )
    stale_thread.start()
    wait_for(stalled_s3.reached, "the stale compactor to send its pointer PUT")
    # Its PUT stalls past its lease: the lock expires and a newer compactor takes it over.
    dynamo.put(CompactionLock(COLLECTION, "stale", expires=0.0, heartbeat=0.0))
    write_delta(aws.s3, aws.chromadb_bucket, COLLECTION, "d2", _records("d2", 3, 2))
    newer = Compactor(aws.s3, aws.chromadb_bucket, dynamo, owner="newer").compact(
        COLLECTION
    )
    assert newer.action == "compacted" and "d2" in newer.applied_now
    stalled_s3.resume.set()
    join_all([stale_thread])

    (stale_result,) = outcome
    assert stale_result.action == "lost"
    assert "snapshot" in stale_result.detail and "unused" in stale_result.detail
    assert read_pointer(aws.s3, aws.chromadb_bucket, COLLECTION) == newer.snapshot
    expected |= {r.id for r in _records("d1", 2, 2) + _records("d2", 3, 2)}
    _, records = read_snapshot(aws, COLLECTION, tmp_path)
    assert set(records) == expected


def test_a_delta_arriving_during_a_compaction_is_merged_before_the_lock_is_released(
    aws, tmp_path
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    write_delta(aws.s3, aws.chromadb_bucket, COLLECTION, "d1", _records("d1", 1, 2))
    turned_away = []

    def a_poll_finishes_and_its_message_is_turned_away() -> None:
        # Between this run's listing and its pointer write, a poll stores a new delta and
        # the compaction its message triggers finds the lock taken.
        write_delta(aws.s3, aws.chromadb_bucket, COLLECTION, "d2", _records("d2", 2, 3))
        other = Compactor(session_clients(aws)["s3"], aws.chromadb_bucket, dynamo)
        turned_away.append(other.compact(COLLECTION).action)

    hooked = CallsBeforePut(
        session_clients(aws)["s3"],
        lambda key: key == pointer_key(COLLECTION),
        a_poll_finishes_and_its_message_is_turned_away,
    )

    result = Compactor(hooked, aws.chromadb_bucket, dynamo).compact(COLLECTION)

    assert hooked.called and turned_away == ["busy"]
    assert (result.action, result.applied_now) == ("compacted", ["d1", "d2"])
    assert dynamo.get_lock(COLLECTION) is None
    _, records = read_snapshot(aws, COLLECTION, tmp_path)
    assert set(records) == {r.id for r in _records("d1", 1, 2) + _records("d2", 2, 3)}


def _second_batch_of_the_same_lines(aws, fake_openai, dynamo, first: dict) -> dict:
    """Another PENDING batch with the same requests, ending `failed` (as when two submits raced)."""
    fake_openai.set_plan(outcome="failed")
    client = OpenAI(api_key=API_KEY, base_url=fake_openai.base_url, max_retries=0)
    content = "".join(
        json.dumps(line) + "\n"
        for line in fake_openai.input_lines(first["openai_batch_id"])
    ).encode()
    uploaded = client.files.create(
        file=("again.jsonl", content, "application/jsonl"), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
    )
    summary = BatchSummary(
        batch_id=str(uuid.uuid4()),
        batch_type=BatchType.LINE_EMBEDDING,
        openai_batch_id=batch.id,
        submitted_at="2026-12-01T19:00:00Z",
        receipt_refs=((SPROUTS_IMAGE, 1),),
    )
    assert dynamo.put_batch_summary_if_absent(summary)
    return {"batch_id": summary.batch_id, "openai_batch_id": batch.id}


@pytest.mark.parametrize("order", ["success_first", "failure_first"])
def test_a_line_embedded_by_one_batch_stays_success_whatever_the_other_batch_says(
    aws, fake_openai, order
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    embedded = _submit_sprouts_lines(dynamo)
    failing = _second_batch_of_the_same_lines(aws, fake_openai, dynamo, embedded)
    poll = load_handler("poll_line_embeddings")
    polls = [embedded, failing] if order == "success_first" else [failing, embedded]

    results = [
        poll.handler({k: b[k] for k in ("batch_id", "openai_batch_id")}, None)
        for b in polls
    ]

    assert sorted(r["action"] for r in results) == ["marked_failed", "processed"]
    sent = {
        line["custom_id"]
        for line in fake_openai.input_lines(embedded["openai_batch_id"])
    }
    statuses = {
        target_of(line).custom_id: line.embedding_status
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
    }
    assert {statuses[c] for c in sent} == {EmbeddingStatus.SUCCESS}
    assert {r.status for r in dynamo.list_batch_results(failing["batch_id"])} == {
        EmbeddingStatus.FAILED
    }
    assert dynamo.get_batch_summary(failing["batch_id"]).status is BatchStatus.FAILED
