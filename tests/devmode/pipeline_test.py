"""The whole pipeline through the six amd64 handler images, each step a real invocation of its
image in dev mode against the //:dev stack (moto + the fake OpenAI): seed receipts -> find ->
submit -> list -> poll lines -> poll words -> compact, ending with the ChromaDB snapshot in S3."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from receipt_dynamo import BatchStatus, EmbeddingStatus, ReceiptDynamoClient, target_of

from tests.pipeline.fake_openai import fake_embedding
from tests.pipeline.fixtures import Aws, query_snapshot, read_snapshot, sqs_event
from tests.pipeline.receipts import SPROUTS_IMAGE, seed
from tools.devmode.function import Function, Settings
from tools.devmode.image import Image
from tools.devmode.stack import DevStack
from tools.devmode.unpack import RootCache

IMAGES = Path("tests/devmode/amd64")
CACHE = Path(os.environ.get("TEST_TMPDIR", "/tmp")) / "devmode-cache"
HANDLERS = (
    "find_unembedded_lines",
    "submit_to_openai",
    "list_pending_batches",
    "poll_line_embeddings",
    "poll_word_embeddings",
    "compact_embeddings",
)


@pytest.fixture(scope="module")
def stack():
    started = DevStack().start()
    yield started
    started.stop()


class Handlers:
    """One warm function per handler image; `call` asserts a response and returns it parsed."""

    def __init__(self, stack: DevStack, scratch: Path):
        self.scratch = scratch
        self.functions: dict[str, Function] = {}
        self.logs = {}
        cache = RootCache(CACHE)
        for name in HANDLERS:
            image = Image.from_directory(IMAGES / name)
            self.logs[name] = open(scratch / f"{name}.log", "w")  # noqa: SIM115 - closed in close()
            settings = Settings(
                image=image,
                root=cache.root_for(image),
                function_name=name.replace("_", "-"),
                env=stack.env,
                timeout=300,
            )
            self.functions[name] = Function(settings, scratch, self.logs[name])

    def log(self, name: str) -> str:
        self.logs[name].flush()
        return (self.scratch / f"{name}.log").read_text()

    def call(self, name: str, event: object) -> object:
        outcome = self.functions[name].invoke(json.dumps(event).encode())
        assert outcome.ok, f"{name}: {outcome.payload!r}\n{self.log(name)}"
        return json.loads(outcome.payload)

    def close(self) -> None:
        for function in self.functions.values():
            function.close()
        for log in self.logs.values():
            log.close()


@pytest.fixture(scope="module")
def handlers(stack, tmp_path_factory):
    made = Handlers(stack, tmp_path_factory.mktemp("functions"))
    yield made
    made.close()


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("name", HANDLERS)
def test_each_image_rejects_an_event_that_is_not_an_object(handlers, name):
    event = ["not", "an", "object"]
    if name == "compact_embeddings":
        # SQS-triggered: a malformed event fails the invocation, since a returned error object
        # would count as success and delete the batch (packages/receipt_label/README.md).
        outcome = handlers.functions[name].invoke(json.dumps(event).encode())
        assert not outcome.ok, outcome.payload
        error = json.loads(outcome.payload)
        assert error["errorType"] == "MalformedSqsEvent", error
        assert error["errorMessage"].endswith("; got list"), error
        return
    answer = handlers.call(name, event)
    assert answer["error"]["type"] == "InvalidInput", answer
    assert answer["error"]["message"].startswith("the event must be a JSON object like")
    assert answer["error"]["message"].endswith("; got list")


def test_receipts_flow_through_the_images_to_a_queryable_snapshot(
    stack, handlers, tmp_path
):
    env = stack.env
    aws = Aws(
        endpoint_url=env["AWS_ENDPOINT_URL"],
        table_name=env["DYNAMODB_TABLE_NAME"],
        chromadb_bucket=env["CHROMADB_BUCKET"],
        batch_bucket=env["BATCH_BUCKET"],
        queue_url=env["COMPACTION_QUEUE_URL"],
    )
    stack.openai.set_plan(in_progress_polls=1)
    dynamo = ReceiptDynamoClient(aws.table_name, stack.client("dynamodb"))
    lines, words = seed(dynamo)

    found_lines = handlers.call("find_unembedded_lines", {})
    found_words = handlers.call(
        "find_unembedded_lines", {"batch_type": "WORD_EMBEDDING"}
    )
    assert len(found_lines["batches"]) == 2 and len(found_words["batches"]) == 2
    assert found_lines["noise_marked"] == 1 and found_words["noise_marked"] == 1

    submitted = [
        handlers.call("submit_to_openai", batch)
        for batch in found_lines["batches"] + found_words["batches"]
    ]
    assert all(s["openai_batch_id"] for s in submitted)

    pending_lines = handlers.call(
        "list_pending_batches", {"batch_type": "LINE_EMBEDDING"}
    )
    pending_words = handlers.call(
        "list_pending_batches", {"batch_type": "WORD_EMBEDDING"}
    )
    assert {p["batch_id"] for p in pending_lines + pending_words} == {
        s["batch_id"] for s in submitted
    }

    for poll, pending in (
        ("poll_line_embeddings", pending_lines),
        ("poll_word_embeddings", pending_words),
    ):
        for batch in pending:
            assert handlers.call(poll, batch)["action"] == "wait"
            result = handlers.call(poll, batch)
            assert result["action"] == "processed" and result["failed"] == 0, result
    assert handlers.call("list_pending_batches", {}) == []

    messages = aws.receive_all()
    assert len(messages) == 4
    assert handlers.call("compact_embeddings", sqs_event(messages)) == {
        "batchItemFailures": []
    }

    embeddable_lines = [line for line in lines if line.text != "-----"]
    embeddable_words = [word for word in words if not word.is_noise]
    line_manifest, line_records = read_snapshot(aws, "receipt_lines", tmp_path)
    word_manifest, word_records = read_snapshot(aws, "receipt_words", tmp_path)
    assert set(line_records) == {target_of(line).custom_id for line in embeddable_lines}
    assert set(word_records) == {target_of(word).custom_id for word in embeddable_words}
    assert len(line_manifest["applied_deltas"]) == 2
    assert len(word_manifest["applied_deltas"]) == 2
    for line in embeddable_lines:
        record = line_records[target_of(line).custom_id]
        assert _close(record["embedding"], fake_embedding(line.text))
        assert record["document"] == line.text
        assert record["metadata"]["text"] == line.text
        assert record["metadata"]["line_id"] == line.line_id
    bananas = line_records[f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00002"][
        "metadata"
    ]
    assert bananas["merchant_name"] == "Sprouts Farmers Market"
    assert (bananas["prev_line"], bananas["next_line"]) == (
        "SPROUTS FARMERS MARKET",
        "ALMOND MILK 3.49",
    )
    milk_word = word_records[
        f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00003#WORD#00002"
    ]
    assert milk_word["document"] == "MILK"
    assert _close(
        milk_word["embedding"],
        fake_embedding("MILK | left: ALMOND | right: 3.49 | position: middle-center"),
    )

    nearest = query_snapshot(
        aws, "receipt_lines", tmp_path, fake_embedding("grand total")
    )
    assert nearest == [f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00005"]

    statuses = {
        target_of(line).custom_id: line.embedding_status
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
    }
    assert sorted(set(statuses.values()), key=str) == [
        EmbeddingStatus.NOISE,
        EmbeddingStatus.SUCCESS,
    ]
    for batch in submitted:
        assert (
            dynamo.get_batch_summary(batch["batch_id"]).status is BatchStatus.COMPLETED
        )
    # The key reached the functions through the stack's environment, never their logs.
    assert all(env["OPENAI_API_KEY"] not in handlers.log(name) for name in HANDLERS)
