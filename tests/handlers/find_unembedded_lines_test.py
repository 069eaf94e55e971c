"""find_unembedded_lines: one NDJSON request file per receipt, noise marked and skipped."""

import json

from receipt_dynamo import EmbeddingStatus, ReceiptDynamoClient

from tests.pipeline.fixtures import load_handler
from tests.pipeline.receipts import COSTCO_IMAGE, SPROUTS_IMAGE, seed


def test_writes_one_request_file_per_receipt_and_marks_noise(aws):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)

    result = load_handler("find_unembedded_lines").handler({}, None)

    sprouts = next(b for b in result["batches"] if b["image_id"] == SPROUTS_IMAGE)
    assert sprouts["s3_bucket"] == aws.batch_bucket and sprouts["receipt_id"] == 1
    body = aws.s3.get_object(Bucket=aws.batch_bucket, Key=sprouts["s3_key"])[
        "Body"
    ].read()
    inputs = [json.loads(line)["body"]["input"] for line in body.splitlines()]
    assert inputs == [
        "SPROUTS FARMERS MARKET",
        "ORGANIC BANANAS 1.99",
        "ALMOND MILK 3.49",
        "GRAND TOTAL 5.48",
    ]
    noise = [
        line
        for line in dynamo.list_receipt_lines(SPROUTS_IMAGE, 1)
        if line.text == "-----"
    ]
    assert noise[0].embedding_status is EmbeddingStatus.NOISE
    # Until they are submitted the lines are still waiting, so another run finds them again.
    again = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    assert {b["image_id"]: b["request_count"] for b in again} == {
        SPROUTS_IMAGE: 4,
        COSTCO_IMAGE: 3,
    }
    assert again[0]["s3_key"] != result["batches"][0]["s3_key"]


def test_nothing_waiting_gives_no_files(aws):
    assert load_handler("find_unembedded_lines").handler({}, None) == {
        "batches": [],
        "noise_marked": 0,
    }
    assert aws.s3_keys(aws.batch_bucket) == []
