"""submit_to_openai: uploads the request file, creates the batch, records it; a repeat is a no-op."""

from receipt_dynamo import BatchStatus, EmbeddingStatus, ReceiptDynamoClient

from tests.pipeline.fixtures import load_handler
from tests.pipeline.receipts import COSTCO_IMAGE, seed


def test_submits_once_and_marks_lines_pending(aws, fake_openai):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    found = load_handler("find_unembedded_lines").handler({}, None)["batches"]
    costco = next(b for b in found if b["image_id"] == COSTCO_IMAGE)
    submit = load_handler("submit_to_openai")

    first = submit.handler(costco, None)
    again = submit.handler(costco, None)

    assert first["submitted"] == 3 and again == {**first, "submitted": 0}
    assert fake_openai.count_requests("POST", "/v1/batches") == 1
    batch = fake_openai.batch(first["openai_batch_id"])
    assert (batch["endpoint"], batch["completion_window"]) == ("/v1/embeddings", "24h")
    assert batch["metadata"] == {
        "batch_id": first["batch_id"],
        "batch_type": "LINE_EMBEDDING",
    }
    summary = dynamo.get_batch_summary(first["batch_id"])
    assert (summary.status, summary.receipt_refs) == (
        BatchStatus.PENDING,
        ((COSTCO_IMAGE, 2),),
    )
    assert {
        line.embedding_status for line in dynamo.list_receipt_lines(COSTCO_IMAGE, 2)
    } == {EmbeddingStatus.PENDING}


def test_a_request_file_whose_lines_were_already_submitted_is_skipped(aws, fake_openai):
    dynamo = ReceiptDynamoClient(aws.table_name, aws.dynamodb)
    seed(dynamo)
    find = load_handler("find_unembedded_lines")
    first_find, second_find = (
        find.handler({}, None)["batches"],
        find.handler({}, None)["batches"],
    )
    submit = load_handler("submit_to_openai")

    assert all(submit.handler(b, None)["submitted"] > 0 for b in first_find)
    assert [submit.handler(b, None) for b in second_find] == [
        {"batch_id": None, "openai_batch_id": None, "submitted": 0}
    ] * len(second_find)
    assert fake_openai.count_requests("POST", "/v1/batches") == len(first_find)
