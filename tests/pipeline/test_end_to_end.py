"""The whole pipeline through the handlers' entry points: seed -> find -> submit -> list -> poll -> compact."""

from __future__ import annotations

import math

from receipt_dynamo import BatchStatus, EmbeddingStatus, ReceiptDynamoClient, target_of
from receipt_label.embedding_requests import word_requests

from tests.pipeline.fake_openai import API_KEY, fake_embedding
from tests.pipeline.fixtures import (
    load_handler,
    query_snapshot,
    read_snapshot,
    sqs_event,
)
from tests.pipeline.receipts import SPROUTS_IMAGE, seed


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(a, b)
    )


def test_receipts_flow_from_dynamodb_to_a_queryable_snapshot(
    aws, fake_openai, tmp_path, capsys
):
    fake_openai.set_plan(in_progress_polls=1)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    lines, words = seed(dynamo)
    handlers = {
        name: load_handler(name)
        for name in (
            "find_unembedded_lines",
            "submit_to_openai",
            "list_pending_batches",
            "poll_line_embeddings",
            "poll_word_embeddings",
            "compact_embeddings",
        )
    }

    found_lines = handlers["find_unembedded_lines"].handler({}, None)
    found_words = handlers["find_unembedded_lines"].handler(
        {"batch_type": "WORD_EMBEDDING"}, None
    )
    assert len(found_lines["batches"]) == 2 and len(found_words["batches"]) == 2
    assert found_lines["noise_marked"] == 1 and found_words["noise_marked"] == 1

    submitted = [
        handlers["submit_to_openai"].handler(b, None)
        for b in found_lines["batches"] + found_words["batches"]
    ]
    assert all(s["openai_batch_id"] for s in submitted)

    pending_lines = handlers["list_pending_batches"].handler(
        {"batch_type": "LINE_EMBEDDING"}, None
    )
    pending_words = handlers["list_pending_batches"].handler(
        {"batch_type": "WORD_EMBEDDING"}, None
    )
    assert {p["batch_id"] for p in pending_lines + pending_words} == {
        s["batch_id"] for s in submitted
    }

    for poll, pending in (
        ("poll_line_embeddings", pending_lines),
        ("poll_word_embeddings", pending_words),
    ):
        for batch in pending:
            assert handlers[poll].handler(batch, None)["action"] == "wait"
            result = handlers[poll].handler(batch, None)
            assert result["action"] == "processed" and result["failed"] == 0, result
    assert handlers["list_pending_batches"].handler({}, None) == []

    messages = aws.receive_all()
    assert len(messages) == 4
    assert handlers["compact_embeddings"].handler(sqs_event(messages), None) == {
        "batchItemFailures": []
    }

    embeddable_lines = [line for line in lines if line.text != "-----"]
    embeddable_words = [word for word in words if not word.is_noise]
    line_manifest, line_records = read_snapshot(aws, "receipt_lines", tmp_path)
    word_manifest, word_records = read_snapshot(aws, "receipt_words", tmp_path)
    assert set(line_records) == {target_of(line).custom_id for line in embeddable_lines}
    assert set(word_records) == {target_of(word).custom_id for word in embeddable_words}
    assert (
        len(line_manifest["applied_deltas"]) == 2
        and len(word_manifest["applied_deltas"]) == 2
    )

    for line in embeddable_lines:
        record = line_records[target_of(line).custom_id]
        assert _close(record["embedding"], fake_embedding(line.text))
        assert record["document"] == line.text
        assert record["metadata"]["text"] == line.text
        assert record["metadata"]["line_id"] == line.line_id
        assert math.isclose(record["metadata"]["y"], line.bounding_box.y, rel_tol=1e-6)
    bananas = line_records[f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00002"][
        "metadata"
    ]
    assert bananas["merchant_name"] == "Sprouts Farmers Market"
    assert (bananas["prev_line"], bananas["next_line"]) == (
        "SPROUTS FARMERS MARKET",
        "ALMOND MILK 3.49",
    )
    expected_word_inputs = {
        r.custom_id: r.input for r in word_requests(embeddable_words, words)
    }
    for custom_id, record in word_records.items():
        assert _close(
            record["embedding"], fake_embedding(expected_word_inputs[custom_id])
        ), custom_id
    milk_word = word_records[
        f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00003#WORD#00002"
    ]
    assert milk_word["document"] == "MILK"
    assert (milk_word["metadata"]["left"], milk_word["metadata"]["right"]) == (
        "ALMOND",
        "3.49",
    )
    assert _close(
        milk_word["embedding"],
        fake_embedding("MILK | left: ALMOND | right: 3.49 | position: middle-center"),
    )

    pointer = aws.s3.get_object(
        Bucket=aws.chromadb_bucket, Key="receipt_lines/snapshot/latest-pointer.txt"
    )
    redelivered = handlers["compact_embeddings"].handler(sqs_event(messages), None)
    assert redelivered == {"batchItemFailures": []}
    again = aws.s3.get_object(
        Bucket=aws.chromadb_bucket, Key="receipt_lines/snapshot/latest-pointer.txt"
    )
    assert again["Body"].read() == pointer["Body"].read()

    nearest = query_snapshot(
        aws, "receipt_lines", tmp_path, fake_embedding("grand total")
    )
    assert nearest == [f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00005"]

    statuses = {
        target_of(line).custom_id: line.embedding_status
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
    }
    assert (
        statuses[f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00004"]
        is EmbeddingStatus.NOISE
    )
    assert sorted(set(statuses.values()), key=str) == [
        EmbeddingStatus.NOISE,
        EmbeddingStatus.SUCCESS,
    ]
    for batch in submitted:
        assert (
            dynamo.get_batch_summary(batch["batch_id"]).status is BatchStatus.COMPLETED
        )

    assert API_KEY not in capsys.readouterr().out
