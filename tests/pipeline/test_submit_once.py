"""Each line reaches OpenAI once: lost responses, crashed submitters and concurrent submitters.

Counts are taken at the fake OpenAI server: every batch it created would be billed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

from openai import OpenAI
from receipt_dynamo import (
    BatchStatus,
    EmbeddingClaims,
    EmbeddingStatus,
    ReceiptDynamoClient,
    target_of,
)
from receipt_label.config import load_config
from receipt_label.pipeline import find_unembedded, poll_embeddings, submit_batch
from receipt_label.pipeline.openai_batches import (
    LIST_PAGE_SIZE,
    LOOKUP_SLACK_SECONDS,
    find_batch,
)
from receipt_label.runtime import Runtime

from tests.pipeline.fake_openai import API_KEY
from tests.pipeline.fixtures import load_handler
from tests.pipeline.receipts import COSTCO_IMAGE, RECEIPTS, SPROUTS_IMAGE, seed

REQUIRED = ("DYNAMODB_TABLE_NAME", "BATCH_BUCKET", "OPENAI_API_KEY")
LEASE_SECONDS = 60


def _runtime(clock_offset: float = 0.0) -> Runtime:
    """A runtime (own boto3 session) whose clock runs `clock_offset` seconds ahead."""
    return Runtime(load_config(REQUIRED), clock=lambda: time.time() + clock_offset)


def _embeddable_lines() -> set[str]:
    return {
        f"IMAGE#{image}#RECEIPT#{receipt:05d}#LINE#{number:05d}"
        for (image, receipt), (_, texts) in RECEIPTS.items()
        for number, text in enumerate(texts, start=1)
        if text != "-----"
    }


def _sprouts_entry(runtime: Runtime) -> dict:
    found = find_unembedded({}, runtime)["batches"]
    return next(b for b in found if b["image_id"] == SPROUTS_IMAGE)


def _poll_all_pending(runtime: Runtime, dynamo: ReceiptDynamoClient) -> list[dict]:
    results = []
    pending = dynamo.list_batch_summaries(BatchStatus.PENDING, "LINE_EMBEDDING").items
    for summary in pending:
        results.append(
            poll_embeddings(
                {
                    "batch_id": summary.batch_id,
                    "openai_batch_id": summary.openai_batch_id,
                },
                runtime,
                summary.batch_type,
            )
        )
    return results


def test_a_lost_create_response_does_not_create_a_second_batch(aws, fake_openai):
    fake_openai.lose_response_next("POST", r"/v1/batches")
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    entry = _sprouts_entry(_runtime())

    submitted = load_handler("submit_to_openai").handler(entry, None)

    assert fake_openai.count_requests("POST", r"/v1/batches", status=0) == 1
    assert fake_openai.batch_ids() == [submitted["openai_batch_id"]]
    assert submitted["submitted"] == 4
    result = load_handler("poll_line_embeddings").handler(
        {k: submitted[k] for k in ("batch_id", "openai_batch_id")}, None
    )
    assert (result["action"], result["succeeded"]) == ("processed", 4)


# Runs submit_batch in its own process and kills it (no cleanup at all) at a chosen point.
_KILLED_SUBMIT = textwrap.dedent(
    """
    import json, os, sys
    from receipt_label.config import load_config
    from receipt_label.pipeline import submit_batch
    from receipt_label.runtime import Runtime

    event, where = json.loads(sys.argv[1]), sys.argv[2]
    runtime = Runtime(load_config(["DYNAMODB_TABLE_NAME", "BATCH_BUCKET", "OPENAI_API_KEY"]))
    def die(*args, **kwargs):
        os._exit(137)
    if where == "before_upload":  # lines claimed, nothing sent to OpenAI
        runtime.openai.files.create = die
    else:  # the batch exists at OpenAI, the BatchSummary is never written
        runtime.dynamo.put_batch_summary_if_absent = die
    submit_batch(event, runtime)
    """
)


def _submit_and_die(event: dict, where: str) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_SUBMIT, json.dumps(event), where],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == 137, killed.stderr.decode()[-2000:]


def test_a_redelivered_submit_adopts_the_batch_its_crashed_predecessor_created(
    aws, fake_openai
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    entry = _sprouts_entry(_runtime())
    _submit_and_die(entry, "after_create")
    (orphan,) = fake_openai.batch_ids()

    redelivered = load_handler("submit_to_openai").handler(entry, None)

    assert redelivered["openai_batch_id"] == orphan
    assert fake_openai.batch_ids() == [orphan]
    summary = dynamo.get_batch_summary(redelivered["batch_id"])
    assert (summary.openai_batch_id, summary.status) == (orphan, BatchStatus.PENDING)
    assert summary.receipt_refs == ((SPROUTS_IMAGE, 1),)
    result = load_handler("poll_line_embeddings").handler(
        {k: redelivered[k] for k in ("batch_id", "openai_batch_id")}, None
    )
    assert (result["action"], result["succeeded"]) == ("processed", 4)


def test_an_orphaned_batch_never_redelivered_is_adopted_by_the_next_submission(
    aws, fake_openai
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    _submit_and_die(_sprouts_entry(_runtime()), "after_create")
    (orphan,) = fake_openai.batch_ids()
    later = _runtime(clock_offset=2 * 1200)  # past the default claim lease

    stranded = _sprouts_entry(later)
    result = submit_batch(stranded, later)

    assert result == {"batch_id": None, "openai_batch_id": None, "submitted": 0}
    assert fake_openai.batch_ids() == [orphan]
    (polled,) = _poll_all_pending(later, dynamo)
    assert (polled["openai_batch_id"], polled["succeeded"]) == (orphan, 4)


def test_a_submitter_that_dies_after_claiming_does_not_strand_its_lines(
    aws, fake_openai, monkeypatch
):
    monkeypatch.setenv("SUBMIT_CLAIM_LEASE_SECONDS", str(LEASE_SECONDS))
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    entry = _sprouts_entry(_runtime())
    _submit_and_die(entry, "before_upload")
    sprouts = [
        target_of(line)
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
        if line.text != "-----"
    ]
    claims = EmbeddingClaims(dynamo).states(sprouts)
    assert {c.status for c in claims.values()} == {EmbeddingStatus.PENDING}
    assert fake_openai.batch_ids() == []

    # While the claim lasts nobody sends these lines, not even a redelivery of the same file.
    now = _runtime()
    assert SPROUTS_IMAGE not in {
        b["image_id"] for b in find_unembedded({}, now)["batches"]
    }
    assert submit_batch(entry, now)["submitted"] == 0
    assert fake_openai.batch_ids() == []

    # Once it has expired, the next find picks them up and one submission sends them.
    later = _runtime(clock_offset=LEASE_SECONDS + 1)
    retry = _sprouts_entry(later)
    assert retry["request_count"] == 4
    assert submit_batch(retry, later)["submitted"] == 4
    assert submit_batch(entry, later)["submitted"] == 0
    (polled,) = _poll_all_pending(later, dynamo)
    assert polled["succeeded"] == 4
    assert sorted(fake_openai.sent_custom_ids()) == sorted(t.custom_id for t in sprouts)


def test_concurrent_submitters_of_overlapping_files_send_each_line_once(
    aws, fake_openai
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    finder = _runtime()
    # Three finds before any submit: three request files for each receipt, all overlapping.
    entries = [b for _ in range(3) for b in find_unembedded({}, finder)["batches"]]
    assert len(entries) == 6
    runtimes = [_runtime() for _ in entries]
    for (
        runtime
    ) in runtimes:  # clients made up front: the race is in submit, not in setup
        runtime.dynamo, runtime.s3, runtime.openai  # noqa: B018
    barrier = threading.Barrier(len(entries))
    results: list[dict] = []
    errors: list[BaseException] = []

    def submit(entry: dict, runtime: Runtime) -> None:
        try:
            barrier.wait(timeout=60)
            results.append(submit_batch(entry, runtime))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=submit, args=pair, name=f"submit-{n}")
        for n, pair in enumerate(zip(entries, runtimes))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not [t.name for t in threads if t.is_alive()], (
        "submitters still running after 300 s"
    )
    assert not errors, errors

    sent = Counter(fake_openai.sent_custom_ids())
    assert {c: n for c, n in sent.items() if n > 1} == {}
    assert set(sent) == _embeddable_lines()
    assert sum(r["submitted"] for r in results) == len(_embeddable_lines())
    polled = _poll_all_pending(finder, dynamo)
    assert sum(p["succeeded"] for p in polled) == len(_embeddable_lines())
    statuses = {
        target_of(line).custom_id: line.embedding_status
        for image, receipt in ((SPROUTS_IMAGE, 1), (COSTCO_IMAGE, 2))
        for line in dynamo.list_receipt_lines(image, receipt)
    }
    assert {statuses[c] for c in _embeddable_lines()} == {EmbeddingStatus.SUCCESS}


def test_the_lookup_by_metadata_reads_every_page_back_to_the_submission(fake_openai):
    client = OpenAI(api_key=API_KEY, base_url=fake_openai.base_url)
    request = {
        "custom_id": "IMAGE#3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f#RECEIPT#00001#LINE#00001",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "MILK"},
    }
    uploaded = client.files.create(
        file=("in.jsonl", json.dumps(request).encode() + b"\n"), purpose="batch"
    )
    started = time.time()

    def create(batch_id: str):
        return client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            metadata={"batch_id": batch_id},
        )

    wanted = create("wanted")
    for number in range(LIST_PAGE_SIZE + 5):  # newer batches push it to the second page
        create(f"other-{number}")

    assert find_batch(client, "wanted", started).id == wanted.id
    assert find_batch(client, "missing", started) is None
    # Batches created long before the submission began are not read at all.
    assert find_batch(client, "wanted", started + 2 * LOOKUP_SLACK_SECONDS) is None
    assert fake_openai.count_requests("GET", r"/v1/batches") == 2 + 2 + 1
