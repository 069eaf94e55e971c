"""poll_word_embeddings: word vectors go to the receipt_words collection with word metadata."""

import json

from receipt_dynamo import ReceiptDynamoClient

from tests.pipeline.fixtures import load_handler, read_snapshot
from tests.pipeline.receipts import COSTCO_IMAGE, seed


def test_word_batch_becomes_a_receipt_words_delta(aws, fake_openai, tmp_path):
    seed(ReceiptDynamoClient(aws.table_name, aws.dynamodb))
    found = load_handler("find_unembedded_lines").handler(
        {"batch_type": "WORD_EMBEDDING"}, None
    )["batches"]
    submitted = load_handler("submit_to_openai").handler(
        next(b for b in found if b["image_id"] == COSTCO_IMAGE), None
    )

    result = load_handler("poll_word_embeddings").handler(submitted, None)

    assert (result["action"], result["succeeded"], result["vector_count"]) == (
        "processed",
        7,
        7,
    )
    (message,) = aws.receive_all()
    assert json.loads(message["Body"])["collection"] == "receipt_words"
    assert (
        load_handler("compact_embeddings").handler(
            {"collection": "receipt_words"}, None
        )["vector_count"]
        == 7
    )
    _, records = read_snapshot(aws, "receipt_words", tmp_path)
    water = records[f"IMAGE#{COSTCO_IMAGE}#RECEIPT#00002#LINE#00002#WORD#00002"][
        "metadata"
    ]
    assert (water["text"], water["left"], water["right"], water["word_id"]) == (
        "WATER",
        "KIRKLAND",
        "4.99",
        2,
    )
    assert water["merchant_name"] == "Costco Wholesale"
