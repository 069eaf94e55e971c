"""Malformed events and request files get a clear error result, and change nothing."""

from __future__ import annotations

import json

import pytest
from receipt_dynamo import ReceiptDynamoClient
from receipt_label.errors import ConfigError, MalformedSqsEvent

from tests.pipeline.fixtures import load_handler
from tests.pipeline.receipts import COSTCO_IMAGE, SPROUTS_IMAGE, seed

LINE_ID = f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00002"
WORD_ID = f"IMAGE#{SPROUTS_IMAGE}#RECEIPT#00001#LINE#00002#WORD#00001"


def _request(custom_id=LINE_ID, text="ORGANIC BANANAS 1.99", **overrides):
    request = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": text},
    }
    request.update(overrides)
    return json.dumps(request)


def _state(aws, fake_openai):
    items = []
    for page in aws.dynamodb.get_paginator("scan").paginate(
        TableName=aws.table_name, ConsistentRead=True
    ):
        items.extend(page["Items"])
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return {
        "items": sorted(json.dumps(item, sort_keys=True) for item in items),
        "chromadb": aws.s3_keys(aws.chromadb_bucket),
        "batches": aws.s3_keys(aws.batch_bucket),
        "queued": attributes["Attributes"]["ApproximateNumberOfMessages"],
        "openai_requests": len(fake_openai.state.requests),
    }


@pytest.fixture
def seeded(aws, fake_openai):
    seed(ReceiptDynamoClient(aws.table_name, aws.dynamodb))
    return aws


def _put_ndjson(aws, key, lines):
    aws.s3.put_object(
        Bucket=aws.batch_bucket, Key=key, Body="\n".join(lines).encode() + b"\n"
    )
    return {"s3_bucket": aws.batch_bucket, "s3_key": key}


CASES = [
    ("find_unembedded_lines", ["not", "an", "object"], "must be a JSON object"),
    (
        "find_unembedded_lines",
        {"batch_type": "PARAGRAPH"},
        "batch_type must be LINE_EMBEDDING or WORD_EMBEDDING",
    ),
    ("submit_to_openai", {}, "non-empty string 's3_bucket'"),
    (
        "submit_to_openai",
        {"s3_bucket": "someone-elses-bucket", "s3_key": "x.ndjson"},
        "is not this pipeline's batch bucket",
    ),
    ("submit_to_openai", "BATCH", "s3://{batch}/missing.ndjson does not exist"),
    ("list_pending_batches", {"limit": 0}, "limit must be an integer from 1 to 1000"),
    ("list_pending_batches", {"limit": "ten"}, "limit must be an integer"),
    ("poll_line_embeddings", {"batch_id": "b-1"}, "non-empty string 'openai_batch_id'"),
    (
        "poll_line_embeddings",
        {"batch_id": "b-1", "openai_batch_id": "batch_1"},
        "no batch summary for batch_id 'b-1'",
    ),
    ("poll_word_embeddings", None, "must be a JSON object"),
    (
        "compact_embeddings",
        {"collection": "receipt_paragraphs"},
        "collection must be one of",
    ),
]


@pytest.mark.parametrize(("handler_name", "event", "message"), CASES)
def test_malformed_events_get_an_error_result_and_change_nothing(
    seeded, fake_openai, handler_name, event, message
):
    if event == "BATCH":
        event = {"s3_bucket": seeded.batch_bucket, "s3_key": "missing.ndjson"}
    handler = load_handler(handler_name)
    before = _state(seeded, fake_openai)

    result = handler.handler(event, None)

    assert set(result) == {"error"} and result["error"]["type"] == "InvalidInput"
    assert message.format(batch=seeded.batch_bucket) in result["error"]["message"]
    assert _state(seeded, fake_openai) == before


SQS_CASES = [
    ({"Records": "not a list"}, "Records must be a list of messages; got str"),
    ({"Records": [{"body": "{}"}]}, "SQS record 1 has no messageId"),
    ({"Records": [{"messageId": "m1", "body": "{}"}, "x"]}, "SQS record 2 has no"),
    ({}, "neither Records nor collection"),
    ([], "got list"),
]


@pytest.mark.parametrize(("event", "message"), SQS_CASES)
def test_a_malformed_sqs_event_fails_the_invocation_instead_of_acknowledging_it(
    seeded, fake_openai, event, message
):
    # Lambda counts any returned value without batchItemFailures as success and deletes every
    # message of the batch, so the only safe answer is an error.
    handler = load_handler("compact_embeddings")
    before = _state(seeded, fake_openai)

    with pytest.raises(MalformedSqsEvent, match=message):
        handler.handler(event, None)

    assert _state(seeded, fake_openai) == before


NDJSON_CASES = [
    ([_request(), "{not json"], "line 2 is not valid JSON"),
    (
        [_request(custom_id="IMAGE#nope#RECEIPT#1#LINE#2")],
        "custom_id 'IMAGE#nope#RECEIPT#1#LINE#2' is not of the form",
    ),
    ([_request(), _request()], "line 2 repeats custom_id"),
    (
        [_request(), _request(custom_id=WORD_ID, text="ORGANIC")],
        "mixes line and word requests",
    ),
    (
        [_request(url="/v1/chat/completions")],
        'line 1 must have "method": "POST" and "url": "/v1/embeddings"',
    ),
    ([_request(text="")], "line 1 must have a non-empty string body.input"),
    (
        [_request(body={"model": "gpt-4o", "input": "x"})],
        'body with "model": "text-embedding-3-small"',
    ),
    (["[1, 2]"], "line 1 is a JSON list"),
    ([""], "has no requests"),
]


@pytest.mark.parametrize(("lines", "message"), NDJSON_CASES)
def test_malformed_request_files_are_rejected_before_anything_is_submitted(
    seeded, fake_openai, lines, message
):
    event = _put_ndjson(seeded, "embedding-requests/line/bad.ndjson", lines)
    handler = load_handler("submit_to_openai")
    before = _state(seeded, fake_openai)

    result = handler.handler(event, None)

    assert result["error"]["type"] == "InvalidInput"
    assert message in result["error"]["message"]
    assert "s3://" in result["error"]["message"]  # names the file
    assert _state(seeded, fake_openai) == before


def test_a_poll_for_the_wrong_kind_of_batch_names_the_right_handler(
    seeded, fake_openai
):
    found = load_handler("find_unembedded_lines").handler(
        {"batch_type": "WORD_EMBEDDING"}, None
    )["batches"]
    submitted = load_handler("submit_to_openai").handler(found[0], None)
    before = _state(seeded, fake_openai)

    result = load_handler("poll_line_embeddings").handler(submitted, None)
    mismatched = load_handler("poll_word_embeddings").handler(
        {**submitted, "openai_batch_id": "batch_other"}, None
    )

    assert (
        "is a WORD_EMBEDDING batch; send it to poll_word_embeddings"
        in result["error"]["message"]
    )
    assert "belongs to OpenAI batch" in mismatched["error"]["message"]
    assert _state(seeded, fake_openai) == before


def test_a_malformed_sqs_message_is_reported_failed_and_the_good_one_is_applied(
    seeded, fake_openai
):
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    costco = next(b for b in found if b["image_id"] == COSTCO_IMAGE)
    submitted = load_handler("submit_to_openai").handler(costco, None)
    load_handler("poll_line_embeddings").handler(submitted, None)
    (good,) = seeded.receive_all()
    event = {
        "Records": [
            {"messageId": "good", "body": good["Body"]},
            {"messageId": "not-json", "body": "{"},
            {
                "messageId": "bad-key",
                "body": json.dumps(
                    {"collection": "receipt_lines", "delta_key": "../etc/"}
                ),
            },
        ]
    }

    result = load_handler("compact_embeddings").handler(event, None)

    assert result == {
        "batchItemFailures": [
            {"itemIdentifier": "not-json"},
            {"itemIdentifier": "bad-key"},
        ]
    }


def test_a_missing_setting_fails_the_cold_start_naming_it(
    aws, fake_openai, monkeypatch, capsys
):
    monkeypatch.delenv("COMPACTION_QUEUE_URL")
    monkeypatch.delenv("CHROMADB_BUCKET")

    with pytest.raises(ConfigError) as raised:
        load_handler("poll_word_embeddings")

    message = str(raised.value)
    assert "CHROMADB_BUCKET" in message and "COMPACTION_QUEUE_URL" in message
    assert "OPENAI_API_KEY" not in message and fake_openai.api_key not in message
    load_handler("list_pending_batches")  # needs neither
