"""OpenAI batch statuses and output files as the real API produces them, through the handlers."""

from __future__ import annotations

from openai import OpenAI
from receipt_dynamo import (
    BatchStatus,
    EmbeddingStatus,
    ReceiptDynamoClient,
    parse_custom_id,
    target_of,
)
from receipt_label.pipeline.batch_output import MAX_EMBEDDING_ATTEMPTS

from tests.pipeline.fake_openai import API_KEY, fake_embedding
from tests.pipeline.fixtures import load_handler, read_snapshot, sqs_event
from tests.pipeline.receipts import SPROUTS_IMAGE, seed

TRADER_JOES_IMAGE = "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f"
TRADER_JOES = {
    (TRADER_JOES_IMAGE, 3): (
        "Trader Joe's",
        [
            "TRADER JOES",
            "MANDARIN ORANGE CHICKEN 4.99",
            "DARK CHOCOLATE BAR 1.99",
            "EVERYTHING BAGEL SEASONING 2.49",
            "CAULIFLOWER GNOCCHI 2.99",
            "TOTAL 15.45",
        ],
    )
}


def _find_and_submit(image_id: str) -> dict:
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    entry = next(b for b in found if b["image_id"] == image_id)
    submitted = load_handler("submit_to_openai").handler(entry, None)
    assert submitted["openai_batch_id"], submitted
    return submitted


def _poll(submitted: dict) -> dict:
    return load_handler("poll_line_embeddings").handler(
        {k: submitted[k] for k in ("batch_id", "openai_batch_id")}, None
    )


def _statuses(dynamo, image_id: str, receipt_id: int) -> dict[str, EmbeddingStatus]:
    return {
        target_of(line).custom_id: line.embedding_status
        for line in dynamo.list_receipt_lines(image_id, receipt_id)
        if line.text != "-----"
    }


def test_every_waiting_status_is_waited_on(aws, fake_openai):
    fake_openai.set_plan(validating_polls=1, in_progress_polls=1, finalizing_polls=1)
    seed(ReceiptDynamoClient(aws.table_name, aws.dynamodb))
    submitted = _find_and_submit(SPROUTS_IMAGE)

    seen = [_poll(submitted) for _ in range(4)]

    assert [(r["action"], r.get("openai_status")) for r in seen] == [
        ("wait", "validating"),
        ("wait", "in_progress"),
        ("wait", "finalizing"),
        ("processed", "completed"),
    ]
    assert seen[-1]["succeeded"] == 4


def test_cancelled_batch_keeps_paid_output_and_sends_only_the_rest_again(
    aws, fake_openai, tmp_path
):
    fake_openai.set_plan(in_progress_polls=1, completed_requests=2)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    submitted = _find_and_submit(SPROUTS_IMAGE)
    assert _poll(submitted)["openai_status"] == "in_progress"
    operator = OpenAI(api_key=API_KEY, base_url=fake_openai.base_url)
    assert operator.batches.cancel(submitted["openai_batch_id"]).status == "cancelling"

    waiting = _poll(submitted)
    result = _poll(submitted)

    assert (waiting["action"], waiting["openai_status"]) == ("wait", "cancelling")
    assert (result["action"], result["openai_status"]) == (
        "processed_partial",
        "cancelled",
    )
    assert (result["succeeded"], result["retried"], result["vector_count"]) == (2, 2, 2)
    sent = [
        line["custom_id"]
        for line in fake_openai.input_lines(submitted["openai_batch_id"])
    ]
    statuses = _statuses(dynamo, SPROUTS_IMAGE, 1)
    assert [statuses[c] for c in sent] == [EmbeddingStatus.SUCCESS] * 2 + [
        EmbeddingStatus.NONE
    ] * 2
    assert (
        dynamo.get_batch_summary(submitted["batch_id"]).status is BatchStatus.COMPLETED
    )

    # The next round sends the two missing lines only, and every line ends embedded once.
    fake_openai.set_plan()
    again = _find_and_submit(SPROUTS_IMAGE)
    assert again["submitted"] == 2
    assert _poll(again)["succeeded"] == 2
    assert sorted(fake_openai.sent_custom_ids()) == sorted(sent + sent[2:])
    assert set(_statuses(dynamo, SPROUTS_IMAGE, 1).values()) == {
        EmbeddingStatus.SUCCESS
    }
    compact = load_handler("compact_embeddings")
    assert compact.handler(sqs_event(aws.receive_all()), None) == {
        "batchItemFailures": []
    }
    _, records = read_snapshot(aws, "receipt_lines", tmp_path)
    assert set(records) == set(sent)


def test_batch_failed_by_a_bad_input_line_fails_that_line_and_retries_the_others(
    aws, fake_openai
):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    too_long = " ".join(
        ["CHICKEN"] * 5000
    )  # past the model's context, accepted at upload
    receipts = {
        (TRADER_JOES_IMAGE, 3): (
            "Trader Joe's",
            ["TRADER JOES", too_long, "TOTAL 4.99"],
        )
    }
    seed(dynamo, receipts)
    submitted = _find_and_submit(TRADER_JOES_IMAGE)
    assert fake_openai.count_requests("POST", "/v1/files", status=200) == 1

    result = _poll(submitted)

    assert (result["action"], result["openai_status"]) == ("marked_failed", "failed")
    assert (result["succeeded"], result["failed"], result["retried"]) == (0, 3, 2)
    statuses = _statuses(dynamo, TRADER_JOES_IMAGE, 3)
    bad = f"IMAGE#{TRADER_JOES_IMAGE}#RECEIPT#00003#LINE#00002"
    assert statuses.pop(bad) is EmbeddingStatus.FAILED
    assert set(statuses.values()) == {EmbeddingStatus.NONE}
    errors = {
        r.custom_id: r.error for r in dynamo.list_batch_results(submitted["batch_id"])
    }
    assert errors[bad] == (
        "invalid_request: The input exceeds the model's maximum context length of "
        "8192 tokens. (input line 2)"
    )
    assert dynamo.get_batch_summary(submitted["batch_id"]).status is BatchStatus.FAILED
    assert aws.s3_keys(aws.chromadb_bucket) == []

    again = _find_and_submit(TRADER_JOES_IMAGE)
    assert again["submitted"] == 2
    assert _poll(again)["action"] == "processed"


def test_malformed_output_lines_each_fail_their_line_and_the_rest_is_kept(
    aws, fake_openai, tmp_path
):
    fake_openai.set_plan(
        status_codes={1: 429, 2: 400},
        errored={3},
        wrong_dimensions={4},
        reverse_output=True,
    )
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo, TRADER_JOES)
    submitted = _find_and_submit(TRADER_JOES_IMAGE)
    sent = [
        line["custom_id"]
        for line in fake_openai.input_lines(submitted["openai_batch_id"])
    ]

    result = _poll(submitted)

    assert (result["action"], result["succeeded"], result["failed"]) == (
        "processed",
        2,
        4,
    )
    assert result["retried"] == 3
    statuses = _statuses(dynamo, TRADER_JOES_IMAGE, 3)
    assert [statuses[c] for c in sent] == [
        EmbeddingStatus.SUCCESS,
        EmbeddingStatus.NONE,  # HTTP 429: sent again later
        EmbeddingStatus.FAILED,  # HTTP 400: the request itself is bad
        EmbeddingStatus.NONE,  # in the error file of a completed batch
        EmbeddingStatus.NONE,  # an embedding of the wrong size
        EmbeddingStatus.SUCCESS,
    ]
    errors = {
        r.custom_id: r.error for r in dynamo.list_batch_results(submitted["batch_id"])
    }
    assert errors[sent[1]].startswith("HTTP 429 rate_limit_exceeded")
    assert errors[sent[2]].startswith("HTTP 400 invalid_request_error")
    assert errors[sent[3]] == "server_error: Injected request error."
    assert errors[sent[4]] == "the embedding has 256 dimensions; the model gives 1536"
    assert dynamo.get_batch_summary(submitted["batch_id"]).status is (
        BatchStatus.COMPLETED
    )

    # Output came in reverse order: each vector still belongs to its own line.
    assert load_handler("compact_embeddings").handler(
        sqs_event(aws.receive_all()), None
    ) == {"batchItemFailures": []}
    _, records = read_snapshot(aws, "receipt_lines", tmp_path)
    assert set(records) == {sent[0], sent[5]}
    for custom_id, record in records.items():
        assert (
            record["document"]
            == TRADER_JOES[(TRADER_JOES_IMAGE, 3)][1][
                parse_custom_id(custom_id).line_id - 1
            ]
        )
        expected = fake_embedding(record["document"])
        assert max(abs(a - b) for a, b in zip(record["embedding"], expected)) < 1e-5


def test_a_line_that_keeps_failing_stops_being_retried(aws, fake_openai):
    fake_openai.set_plan(errored={0})
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo, TRADER_JOES)
    first = f"IMAGE#{TRADER_JOES_IMAGE}#RECEIPT#00003#LINE#00001"

    rounds = []
    for _ in range(MAX_EMBEDDING_ATTEMPTS):
        rounds.append(_poll(_find_and_submit(TRADER_JOES_IMAGE)))

    assert [r["retried"] for r in rounds] == [1] * (MAX_EMBEDDING_ATTEMPTS - 1) + [0]
    assert _statuses(dynamo, TRADER_JOES_IMAGE, 3)[first] is EmbeddingStatus.FAILED
    assert fake_openai.sent_custom_ids().count(first) == MAX_EMBEDDING_ATTEMPTS
    assert load_handler("find_unembedded_lines").handler({}, None)["batches"] == []
