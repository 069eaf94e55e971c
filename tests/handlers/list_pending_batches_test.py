"""list_pending_batches: PENDING summaries of one type, bounded by limit across pages."""

from receipt_dynamo import BatchStatus, BatchSummary, BatchType, ReceiptDynamoClient

from tests.pipeline.fixtures import load_handler


def test_lists_pending_batches_of_the_requested_type_up_to_the_limit(aws):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    dynamo.put_many(
        [
            BatchSummary(f"line-{n}", BatchType.LINE_EMBEDDING, f"batch_l{n}", "t")
            for n in range(7)
        ]
        + [BatchSummary("word-0", BatchType.WORD_EMBEDDING, "batch_w0", "t")]
        + [
            BatchSummary(
                "done",
                BatchType.LINE_EMBEDDING,
                "batch_d",
                "t",
                status=BatchStatus.COMPLETED,
            )
        ]
    )
    handler = load_handler("list_pending_batches")

    lines = handler.handler({"batch_type": "LINE_EMBEDDING"}, None)
    limited = handler.handler({"limit": 3}, None)
    words = handler.handler({"batch_type": "WORD_EMBEDDING"}, None)

    assert sorted(b["batch_id"] for b in lines) == [f"line-{n}" for n in range(7)]
    assert {"batch_id": "line-0", "openai_batch_id": "batch_l0"} in lines
    assert len(limited) == 3 and {b["batch_id"] for b in limited} <= {
        b["batch_id"] for b in lines
    }
    assert words == [{"batch_id": "word-0", "openai_batch_id": "batch_w0"}]
