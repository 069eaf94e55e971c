"""Entities: keys, item round trips and validation errors that name the problem."""

import pytest
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    BatchType,
    BoundingBox,
    CompactionLock,
    EmbeddingBatchResult,
    EmbeddingStatus,
    EntityError,
    ReceiptLine,
    ReceiptMetadata,
    ReceiptWord,
    parse_custom_id,
    target_of,
)

IMAGE = "3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f"
BOX = BoundingBox(0.1, 0.2, 0.3, 0.05)


def test_line_keys_and_gsi_mirror_the_embedding_status():
    line = ReceiptLine(IMAGE, 7, 12, "TOTAL 5.48", BOX, 0.99, EmbeddingStatus.PENDING)
    item = line.to_item()
    assert (item["PK"], item["SK"]) == (f"IMAGE#{IMAGE}", "RECEIPT#00007#LINE#00012")
    assert item["GSI1PK"] == "EMBEDDING_STATUS#PENDING"
    assert item["TYPE"] == "RECEIPT_LINE"
    assert ReceiptLine.from_item(item) == line


def test_word_round_trip_keeps_noise_flag_and_names_its_custom_id():
    word = ReceiptWord(IMAGE, 1, 2, 3, "----", BOX, 0.5, is_noise=True)
    assert word.key["SK"] == "RECEIPT#00001#LINE#00002#WORD#00003"
    assert ReceiptWord.from_item(word.to_item()) == word
    assert (
        target_of(word).custom_id
        == f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00002#WORD#00003"
    )


def test_metadata_prefers_the_canonical_merchant_name():
    metadata = ReceiptMetadata(
        IMAGE,
        1,
        merchant_name="SPROUTS #123",
        canonical_merchant_name="Sprouts Farmers Market",
    )
    assert metadata.best_merchant_name == "Sprouts Farmers Market"
    assert metadata.to_item()["GSI3PK"] == "MERCHANT#SPROUTS FARMERS MARKET"
    assert ReceiptMetadata.from_item(metadata.to_item()) == metadata
    assert "GSI3PK" not in ReceiptMetadata(IMAGE, 2).to_item()


def test_batch_summary_indexes_by_status_and_type():
    summary = BatchSummary(
        "b-1",
        BatchType.WORD_EMBEDDING,
        "batch_9",
        "2025-01-01T00:00:00Z",
        receipt_refs=((IMAGE, 1),),
    )
    item = summary.to_item()
    assert (item["PK"], item["SK"]) == ("BATCH#b-1", "STATUS")
    assert item["GSI1PK"] == "STATUS#PENDING"
    assert item["GSI1SK"] == "BATCH_TYPE#WORD_EMBEDDING#BATCH_ID#b-1"
    assert BatchSummary.from_item(item) == summary


def test_result_and_lock_items():
    result = EmbeddingBatchResult(
        "b-1",
        f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00002",
        EmbeddingStatus.FAILED,
        "expired",
    )
    assert result.to_item()["SK"] == f"RESULT#IMAGE#{IMAGE}#RECEIPT#00001#LINE#00002"
    assert EmbeddingBatchResult.from_item(result.to_item()) == result
    lock = CompactionLock("receipt_lines", "me", expires=1000.5, heartbeat=990.0)
    assert lock.to_item()["TimeToLive"] == 1000 + CompactionLock.TTL_GRACE_SECONDS
    assert lock.key == {"PK": "LOCK#receipt_lines", "SK": "LOCK"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: ReceiptLine("not-a-uuid", 1, 1, "x", BOX, 0.9),
            "image_id must be a UUID",
        ),
        (
            lambda: ReceiptLine(IMAGE, 0, 1, "x", BOX, 0.9),
            "receipt_id must be an integer from 1 to 99999",
        ),
        (
            lambda: ReceiptLine(IMAGE, 1, 1, "x", BOX, 1.5),
            "confidence must be between 0 and 1",
        ),
        (
            lambda: ReceiptLine(IMAGE, 1, 1, "x", BOX, 0.9, "DONE"),
            "embedding_status must be one of NONE, PENDING",
        ),
        (
            lambda: BoundingBox(0.1, float("nan"), 0.1, 0.1),
            "bounding_box.y must be a finite number",
        ),
        (
            lambda: ReceiptWord(IMAGE, 1, 1, 1, "x", BOX, 0.9, is_noise="yes"),
            "is_noise must be true or false",
        ),
        (
            lambda: BatchSummary("bad id!", "LINE_EMBEDDING", "b", "t"),
            "batch_id must be 1-128 letters",
        ),
        (
            lambda: BatchSummary("b", "LINE_EMBEDDING", "b", "t", status="DONE"),
            "status must be one of PENDING",
        ),
        (
            lambda: ReceiptLine.from_item(
                {"PK": f"IMAGE#{IMAGE}", "SK": "RECEIPT#00001#LINE#00001"}
            ),
            "lacks attribute 'text'",
        ),
    ],
)
def test_validation_errors_name_the_field(make, message):
    with pytest.raises(EntityError, match=None) as raised:
        make()
    assert message in str(raised.value)


def test_custom_ids_parse_and_reject_other_shapes():
    target = parse_custom_id(f"IMAGE#{IMAGE}#RECEIPT#00003#LINE#00004#WORD#00005")
    assert (target.receipt_id, target.line_id, target.word_id, target.is_word) == (
        3,
        4,
        5,
        True,
    )
    for bad in (
        f"IMAGE#{IMAGE}#RECEIPT#3#LINE#4",
        "RECEIPT#00001#LINE#00001",
        None,
        42,
    ):
        with pytest.raises(EntityError, match="is not of the form IMAGE#<uuid>"):
            parse_custom_id(bad)
    assert BatchStatus("COMPLETED") is BatchStatus.COMPLETED
