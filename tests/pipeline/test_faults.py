"""Faults: expired and failed batches, OpenAI errors, concurrent and crashing compactions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from receipt_dynamo import BatchStatus, EmbeddingStatus, ReceiptDynamoClient, target_of
from receipt_dynamo.client import serialize
from receipt_dynamo.entities import lock_key
from receipt_label.chroma_store import VectorRecord, read_manifest
from receipt_label.compaction import (
    SNAPSHOT_MANIFEST,
    read_pointer,
    snapshot_prefix,
    write_delta,
)
from receipt_label.pipeline.openai_batches import CREATE_ATTEMPTS

from tests.pipeline.fake_openai import fake_embedding
from tests.pipeline.fixtures import load_handler, read_snapshot, sqs_event
from tests.pipeline.receipts import SPROUTS_IMAGE, seed


def _submit_sprouts_lines(aws, dynamo):
    seed(dynamo)
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    sprouts = next(b for b in found if b["image_id"] == SPROUTS_IMAGE)
    return load_handler("submit_to_openai").handler(sprouts, None)


def test_expired_batch_keeps_partial_output_and_sends_the_rest_again(aws, fake_openai):
    fake_openai.set_plan(outcome="expired", completed_requests=2)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    submitted = _submit_sprouts_lines(aws, dynamo)

    result = load_handler("poll_line_embeddings").handler(
        {
            "batch_id": submitted["batch_id"],
            "openai_batch_id": submitted["openai_batch_id"],
        },
        None,
    )

    assert result["action"] == "processed_partial"
    assert (result["succeeded"], result["failed"], result["vector_count"]) == (2, 2, 2)
    assert result["retried"] == 2
    sent = [
        line["custom_id"]
        for line in fake_openai.input_lines(submitted["openai_batch_id"])
    ]
    statuses = {
        target_of(line).custom_id: line.embedding_status
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
    }
    assert [statuses[custom_id] for custom_id in sent] == [
        EmbeddingStatus.SUCCESS
    ] * 2 + [EmbeddingStatus.NONE] * 2
    results = {r.custom_id: r for r in dynamo.list_batch_results(submitted["batch_id"])}
    assert set(results) == set(sent)
    assert all("batch_expired" in results[c].error for c in sent[2:])
    assert (
        dynamo.get_batch_summary(submitted["batch_id"]).status is BatchStatus.COMPLETED
    )
    (message,) = aws.receive_all()
    body = json.loads(message["Body"])
    assert body.pop("delta_key").startswith(
        f"receipt_lines/delta/{submitted['batch_id']}_"
    )
    assert body == {
        "batch_id": submitted["batch_id"],
        "collection": "receipt_lines",
        "vector_count": 2,
    }
    # Only the lines without output go out again.
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    (again,) = [b for b in found if b["image_id"] == SPROUTS_IMAGE]
    assert again["request_count"] == 2


def test_failed_batch_writes_no_delta_and_sends_its_lines_again(aws, fake_openai):
    fake_openai.set_plan(outcome="failed")
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    submitted = _submit_sprouts_lines(aws, dynamo)

    result = load_handler("poll_line_embeddings").handler(
        {
            "batch_id": submitted["batch_id"],
            "openai_batch_id": submitted["openai_batch_id"],
        },
        None,
    )

    assert (
        result["action"],
        result["succeeded"],
        result["failed"],
        result["delta_key"],
    ) == ("marked_failed", 0, 4, None)
    assert result["retried"] == 4
    lines = [
        line
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
        if line.text != "-----"
    ]
    assert {line.embedding_status for line in lines} == {EmbeddingStatus.NONE}
    results = dynamo.list_batch_results(submitted["batch_id"])
    assert {r.error for r in results} == {
        "the batch failed (server_error: The batch failed (injected).)"
    }
    assert dynamo.get_batch_summary(submitted["batch_id"]).status is BatchStatus.FAILED
    assert aws.receive_all() == []
    assert aws.s3_keys(aws.chromadb_bucket) == []


def test_openai_server_errors_are_retried_and_the_batch_is_created_once(
    aws, fake_openai
):
    fake_openai.fail_next("POST", r"/v1/files", times=1, status=500)
    fake_openai.fail_next("POST", r"/v1/batches", times=1, status=500)
    fake_openai.fail_next("GET", r"/v1/batches/[^/]+", times=1, status=503)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)

    submitted = _submit_sprouts_lines(aws, dynamo)
    result = load_handler("poll_line_embeddings").handler(
        {
            "batch_id": submitted["batch_id"],
            "openai_batch_id": submitted["openai_batch_id"],
        },
        None,
    )

    assert result["action"] == "processed" and result["succeeded"] == 4
    assert fake_openai.count_requests("POST", r"/v1/files", status=500) == 1
    assert fake_openai.count_requests("POST", r"/v1/batches", status=500) == 1
    assert fake_openai.count_requests("POST", r"/v1/batches", status=200) == 1
    assert fake_openai.count_requests("GET", r"/v1/batches/[^/]+", status=503) == 1


def test_openai_that_keeps_failing_leaves_nothing_half_written(aws, fake_openai):
    fake_openai.fail_next("POST", r"/v1/batches", times=100, status=500)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    batch = load_handler("find_unembedded_lines").handler({}, None)["batches"][0]
    submit = load_handler("submit_to_openai")
    from openai import InternalServerError

    with pytest.raises(InternalServerError):
        submit.handler(batch, None)
    # Bounded: a fixed number of creation attempts, each followed by a check for an orphan.
    assert (
        fake_openai.count_requests("POST", r"/v1/batches", status=500)
        == CREATE_ATTEMPTS
    )
    assert (
        dynamo.list_batch_summaries(BatchStatus.PENDING, "LINE_EMBEDDING").items == []
    )
    assert {
        line.embedding_status
        for line in dynamo.list_receipt_lines(batch["image_id"], batch["receipt_id"])
    } <= {
        EmbeddingStatus.NONE,
        EmbeddingStatus.NOISE,
    }


def _records(prefix: str, receipt_id: int, count: int) -> list[VectorRecord]:
    records = []
    for number in range(1, count + 1):
        text = f"{prefix} item {number}"
        custom_id = f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#{receipt_id:05d}#LINE#{number:05d}"
        records.append(
            VectorRecord(
                custom_id, fake_embedding(text), text, {"text": text, "line_id": number}
            )
        )
    return records


def _lineage(aws, collection: str) -> list[dict]:
    """The snapshot manifests from the current one back to the first, newest first."""
    chain = []
    stamp = read_pointer(aws.s3, aws.chromadb_bucket, collection)
    while stamp:
        manifest = read_manifest(
            aws.s3,
            aws.chromadb_bucket,
            snapshot_prefix(collection, stamp),
            SNAPSHOT_MANIFEST,
        )
        assert manifest is not None, f"snapshot {stamp} in the lineage is incomplete"
        chain.append(manifest)
        stamp = manifest["parent"]
    return chain


def _assert_each_delta_applied_once(aws, collection: str, delta_ids: set[str]) -> None:
    chain = _lineage(aws, collection)
    introduced: list[str] = []
    for manifest in chain:
        parent = next((m for m in chain if m["stamp"] == manifest["parent"]), None)
        introduced += sorted(
            set(manifest["applied_deltas"])
            - set(parent["applied_deltas"] if parent else [])
        )
    assert sorted(introduced) == sorted(delta_ids)


def test_concurrent_compactions_and_a_redelivered_message_apply_every_delta_once(
    aws, tmp_path
):
    deltas = {f"delta-{n}": _records(f"d{n}", n + 1, 3) for n in range(4)}
    for delta_id, records in deltas.items():
        write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", delta_id, records)
    messages = [
        {
            "MessageId": f"m{n}",
            "ReceiptHandle": f"h{n}",
            "Body": json.dumps(
                {
                    "delta_key": f"receipt_lines/delta/delta-{n}/",
                    "collection": "receipt_lines",
                    "vector_count": 3,
                    "batch_id": f"b{n}",
                }
            ),
        }
        for n in range(4)
    ]
    compactors = [
        load_handler("compact_embeddings"),
        load_handler("compact_embeddings"),
    ]
    deliveries = [sqs_event(messages[:3]), sqs_event(messages[2:])]  # m2 arrives twice
    barrier = threading.Barrier(3)
    failures: list[str] = []
    errors: list[BaseException] = []
    seen_pointers: set[str] = set()
    done = threading.Event()

    def run(handler, event):
        try:
            barrier.wait()
            result = handler.handler(event, None)
            failures.extend(f["itemIdentifier"] for f in result["batchItemFailures"])
        except Exception as error:  # noqa: BLE001 - re-raised by the main thread
            errors.append(error)

    def watch_pointer():
        barrier.wait()
        while not done.is_set():
            stamp = read_pointer(aws.s3, aws.chromadb_bucket, "receipt_lines")
            if stamp:
                seen_pointers.add(stamp)
                manifest = read_manifest(
                    aws.s3,
                    aws.chromadb_bucket,
                    snapshot_prefix("receipt_lines", stamp),
                    SNAPSHOT_MANIFEST,
                )
                if manifest is None:
                    errors.append(
                        AssertionError(f"pointer named incomplete snapshot {stamp}")
                    )
            time.sleep(0.02)

    threads = [
        threading.Thread(target=run, args=(c, e))
        for c, e in zip(compactors, deliveries)
    ]
    watcher = threading.Thread(target=watch_pointer)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join(60)
    first_round_failures = list(failures)
    # SQS redelivers what was reported failed until it succeeds.
    by_id = {m["MessageId"]: m for m in messages}
    for _ in range(10):
        if not failures:
            break
        retry = sqs_event([by_id[i] for i in dict.fromkeys(failures)])
        failures.clear()
        failures.extend(
            f["itemIdentifier"]
            for f in compactors[0].handler(retry, None)["batchItemFailures"]
        )
    done.set()
    watcher.join(10)

    assert not errors, errors
    assert first_round_failures, (
        "the two compactions did not overlap, so the lock was never contended"
    )
    assert failures == []
    _, records = read_snapshot(aws, "receipt_lines", tmp_path)
    assert set(records) == {r.id for batch in deltas.values() for r in batch}
    _assert_each_delta_applied_once(aws, "receipt_lines", set(deltas))
    assert seen_pointers


_KILLED_COMPACTION = textwrap.dedent(
    """
    import os, sys, boto3
    from receipt_dynamo import ReceiptDynamoClient
    from receipt_label.compaction import Compactor, pointer_key

    endpoint, bucket, table = sys.argv[1:4]
    def client(service):
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    class DiesBeforePointer:
        def __init__(self, s3):
            self._s3 = s3
        def __getattr__(self, name):
            return getattr(self._s3, name)
        def put_object(self, **kwargs):
            if kwargs["Key"] == pointer_key("receipt_lines"):
                os._exit(137)  # killed: no cleanup, the lock stays held
            return self._s3.put_object(**kwargs)

    dynamo = ReceiptDynamoClient(table, client("dynamodb"))
    Compactor(DiesBeforePointer(client("s3")), bucket, dynamo, lock_ttl_seconds=600).compact("receipt_lines")
    """
)


def _expire_lock(aws, collection: str) -> None:
    """Moves the lock's expiry into the past: what time does to a dead owner's lease, without
    sleeping through a TTL short enough to expire under a loaded machine's own pauses."""
    aws.dynamodb.update_item(
        TableName=aws.table_name,
        Key=serialize(lock_key(collection)),
        UpdateExpression="SET expires = :past",
        ConditionExpression="attribute_exists(PK)",
        ExpressionAttributeValues=serialize({":past": time.time() - 1}),
    )


def test_compaction_killed_before_the_pointer_write_leaves_the_old_snapshot_current(
    aws, tmp_path
):
    first, second = _records("first", 1, 2), _records("second", 2, 3)
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "delta-first", first)
    compact = load_handler("compact_embeddings")
    assert (
        compact.handler({"collection": "receipt_lines"}, None)["action"] == "compacted"
    )
    old_stamp = read_pointer(aws.s3, aws.chromadb_bucket, "receipt_lines")
    write_delta(aws.s3, aws.chromadb_bucket, "receipt_lines", "delta-second", second)

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_COMPACTION,
            aws.endpoint_url,
            aws.chromadb_bucket,
            aws.table_name,
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        timeout=120,
        check=False,
    )

    assert killed.returncode == 137, killed.stderr.decode()[-2000:]
    assert read_pointer(aws.s3, aws.chromadb_bucket, "receipt_lines") == old_stamp
    uploaded = {
        k.split("/")[3]
        for k in aws.s3_keys(aws.chromadb_bucket, "receipt_lines/snapshot/timestamped/")
    }
    assert len(uploaded) == 2, (
        "the killed run should have uploaded its (unused) snapshot"
    )
    _, records = read_snapshot(aws, "receipt_lines", tmp_path)
    assert set(records) == {r.id for r in first}
    assert compact.handler({"collection": "receipt_lines"}, None)["action"] == "busy"

    _expire_lock(aws, "receipt_lines")  # the dead owner's lease runs out
    result = compact.handler({"collection": "receipt_lines"}, None)

    assert (result["action"], result["applied_now"]) == ("compacted", ["delta-second"])
    _, records = read_snapshot(aws, "receipt_lines", tmp_path)
    assert set(records) == {r.id for r in first + second}
    assert _lineage(aws, "receipt_lines")[0]["parent"] == old_stamp
    _assert_each_delta_applied_once(
        aws, "receipt_lines", {"delta-first", "delta-second"}
    )
