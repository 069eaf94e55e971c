"""poll_line_embeddings: waits while OpenAI works, then writes the delta and queues compaction."""

import json

from receipt_dynamo import BatchStatus, ReceiptDynamoClient

from tests.pipeline.fixtures import load_handler
from tests.pipeline.receipts import COSTCO_IMAGE, seed


def test_waits_then_writes_the_delta_once(aws, fake_openai):
    fake_openai.set_plan(in_progress_polls=2)
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    submitted = load_handler("submit_to_openai").handler(
        next(b for b in found if b["image_id"] == COSTCO_IMAGE), None
    )
    event = {
        "batch_id": submitted["batch_id"],
        "openai_batch_id": submitted["openai_batch_id"],
    }
    poll = load_handler("poll_line_embeddings")

    actions = [poll.handler(event, None)["action"] for _ in range(4)]

    assert actions == ["wait", "wait", "processed", "already_processed"]
    assert (
        dynamo.get_batch_summary(submitted["batch_id"]).status is BatchStatus.COMPLETED
    )
    (message,) = aws.receive_all()
    delta = json.loads(message["Body"])["delta_key"]
    # Each poll attempt writes a delta of its own, named after the batch.
    assert delta.startswith(f"receipt_lines/delta/{submitted['batch_id']}_")
    assert delta + "_delta.json" in aws.s3_keys(aws.chromadb_bucket, delta)
