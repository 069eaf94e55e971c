"""Soak: concurrent pollers and compactors over many batches, with S3 stalls and lock expiries.

At the end the current snapshot holds every embedded line exactly once, every delta is applied
or quarantined, and nothing is in the dead-letter queue. The default size runs in `bazel test`
in well under a minute; for a longer run pass a bigger size (SOAK_LOCK_EXPIRIES: how many
holders lose their lock; SOAK_SEED varies the stalls):

  tools/bazel test //tests/pipeline:soak_test --test_output=streamed \
      --test_env=SOAK_BATCHES=40 --test_env=SOAK_POLLERS=4 --test_env=SOAK_COMPACTORS=3
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from typing import Any

from receipt_dynamo import (
    BatchStatus,
    BatchType,
    CompactionLock,
    ReceiptDynamoClient,
)
from receipt_label.compaction import DELTA_MANIFEST, current_snapshot
from receipt_label.pipeline import compact, poll_embeddings

from tests.pipeline.fixtures import load_handler, read_snapshot, sqs_event
from tests.pipeline.interleaving import AWAIT_SECONDS, join_all, thread_runtime
from tests.pipeline.receipts import seed

BATCHES = int(os.environ.get("SOAK_BATCHES", "3"))
POLLERS = int(os.environ.get("SOAK_POLLERS", "2"))
COMPACTORS = int(os.environ.get("SOAK_COMPACTORS", "2"))
SEED = int(os.environ.get("SOAK_SEED", "14"))
LOCK_EXPIRIES = int(os.environ.get("SOAK_LOCK_EXPIRIES", "2"))
# The queue as Lambda's trigger would have it: a message reported failed comes back after the
# visibility timeout, and one that failed MAX_RECEIVES deliveries goes to the dead-letter queue.
VISIBILITY_TIMEOUT_SECONDS = 4
MAX_RECEIVES = 10
COLLECTION = "receipt_lines"


class StallingS3:
    """Delays S3 calls by random milliseconds, as a slow or retried request would: often and
    longer for the writes whose order matters (a delta's manifest, the pointer). The stalls
    perturb the interleaving; nothing waits on them for correctness."""

    STALLED = ("put_object", "get_object", "upload_file", "download_file")
    ORDERED = (DELTA_MANIFEST, "latest-pointer.txt")

    def __init__(self, s3: Any, rng: random.Random):
        self._s3, self._rng = s3, rng

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._s3, name)
        if name not in self.STALLED:
            return method

        def stalled(*args: Any, **kwargs: Any) -> Any:
            ordered = str(kwargs.get("Key", "")).endswith(self.ORDERED)
            if self._rng.random() < (0.5 if ordered else 0.2):
                time.sleep(self._rng.uniform(0.0, 0.3 if ordered else 0.03))
            return method(*args, **kwargs)

        return stalled


def _receipts() -> dict:
    return {
        (str(uuid.UUID(int=0x5AC0 + n, version=4)), 1): (
            f"Store {n}",
            [f"STORE {n} ITEM {k} {k}.{n}9" for k in range(1, 4)],
        )
        for n in range(BATCHES)
    }


def _configure_queue(aws) -> str:
    """Gives the compaction queue its visibility timeout and a dead-letter queue; returns the DLQ's URL."""
    dlq = aws.sqs.create_queue(QueueName=aws.queue_url.rsplit("/", 1)[-1] + "-dlq")
    arn = aws.sqs.get_queue_attributes(
        QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    aws.sqs.set_queue_attributes(
        QueueUrl=aws.queue_url,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(MAX_RECEIVES)}
            ),
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS),
        },
    )
    return dlq["QueueUrl"]


def _queue_empty(sqs: Any, queue_url: str) -> bool:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
        ],
    )["Attributes"]
    return all(int(v) == 0 for v in attributes.values())


def test_concurrent_pollers_and_compactors_lose_nothing(aws, fake_openai, tmp_path):
    began = time.monotonic()
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo, _receipts())
    submit = load_handler("submit_to_openai")
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    batches = [submit.handler(b, None) for b in found]
    assert len(batches) == BATCHES
    expected = {
        line["custom_id"]
        for b in batches
        for line in fake_openai.input_lines(b["openai_batch_id"])
    }
    dlq_url = _configure_queue(aws)
    errors: list[BaseException] = []
    stop = threading.Event()
    outcomes: dict[str, int] = {}
    count_lock = threading.Lock()

    def count(what: str) -> None:
        with count_lock:
            outcomes[what] = outcomes.get(what, 0) + 1

    def guarded(work):
        def run(*args):
            try:
                work(*args)
            except BaseException as error:  # noqa: BLE001 - asserted by the main thread
                errors.append(error)
                stop.set()

        return run

    start = threading.Barrier(POLLERS + COMPACTORS + 1)

    @guarded
    def poller(number: int) -> None:
        rng = random.Random(SEED * 1000 + number)
        runtime = thread_runtime(aws, lambda s3: StallingS3(s3, rng))
        start.wait(AWAIT_SECONDS)
        # Every poller goes through the same list, as overlapping state-machine runs do.
        for batch in batches:
            event = {k: batch[k] for k in ("batch_id", "openai_batch_id")}
            count(poll_embeddings(event, runtime, BatchType.LINE_EMBEDDING)["action"])

    @guarded
    def compactor(number: int) -> None:
        rng = random.Random(SEED * 2000 + number)
        runtime = thread_runtime(aws, lambda s3: StallingS3(s3, rng))
        sqs = runtime.sqs
        start.wait(AWAIT_SECONDS)
        while not stop.is_set():
            messages = sqs.receive_message(
                QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            if not messages:
                continue
            failed = {
                f["itemIdentifier"]
                for f in compact(sqs_event(messages), runtime)["batchItemFailures"]
            }
            for message in messages:
                if message["MessageId"] in failed:
                    count("message failed")  # SQS delivers it again after the timeout
                else:
                    count("message done")
                    sqs.delete_message(
                        QueueUrl=aws.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )

    @guarded
    def lock_thief() -> None:
        # Now and then expires the lock of whoever holds it, as a holder stalled past its TTL
        # would find it; each holder at most once (a lock that always expires stops all work).
        rng = random.Random(SEED)
        thief = ReceiptDynamoClient(aws.table_name, thread_runtime(aws).dynamodb)
        expired: set[str] = set()
        while len(expired) < LOCK_EXPIRIES and not stop.wait(rng.uniform(0.2, 1.0)):
            lock = thief.get_lock(COLLECTION)
            if lock is not None and lock.owner not in expired:
                thief.put(CompactionLock(COLLECTION, lock.owner, 0.0, 0.0))
                expired.add(lock.owner)
                count("lock expired")

    threads = [
        threading.Thread(target=poller, args=(n,), name=f"poller-{n}")
        for n in range(POLLERS)
    ] + [
        threading.Thread(target=compactor, args=(n,), name=f"compactor-{n}")
        for n in range(COMPACTORS)
    ]
    thief = threading.Thread(target=lock_thief, name="lock-thief")
    for thread in [*threads, thief]:
        thread.start()
    start.wait(AWAIT_SECONDS)
    started = time.monotonic()
    try:
        join_all(threads[:POLLERS])
        polled = time.monotonic()
        deadline = time.monotonic() + 4 * AWAIT_SECONDS
        while not stop.is_set() and not _queue_empty(aws.sqs, aws.queue_url):
            assert time.monotonic() < deadline, (
                f"the compaction queue did not drain; outcomes so far {outcomes}"
            )
            stop.wait(0.5)
    finally:
        stop.set()
        join_all([*threads[POLLERS:], thief])

    assert not errors, errors
    print(
        f"soak: {BATCHES} batches, {POLLERS} pollers, {COMPACTORS} compactors; "
        f"setup {started - began:.1f}s, polls {polled - started:.1f}s, "
        f"drained after {time.monotonic() - started:.1f}s; outcomes {outcomes}"
    )
    summaries = [dynamo.get_batch_summary(b["batch_id"]) for b in batches]
    assert {s.status for s in summaries} == {BatchStatus.COMPLETED}
    assert outcomes["processed"] >= BATCHES
    dead = aws.sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)
    assert dead.get("Messages", []) == []
    deltas = {
        key.split("/")[2]
        for key in aws.s3_keys(aws.chromadb_bucket, f"{COLLECTION}/delta/")
        if key.endswith("/" + DELTA_MANIFEST)
    }
    _, manifest = current_snapshot(aws.s3, aws.chromadb_bucket, COLLECTION)
    assert deltas == set(manifest["applied_deltas"])
    assert aws.s3_keys(aws.chromadb_bucket, f"{COLLECTION}/quarantine/") == []
    _, records = read_snapshot(aws, COLLECTION, tmp_path)
    assert set(records) == expected
    assert manifest["vector_count"] == len(expected)
