"""Sample receipts for the pipeline's tests, with their lines, words and merchants."""

from __future__ import annotations

from receipt_dynamo import (
    BoundingBox,
    ReceiptDynamoClient,
    ReceiptLine,
    ReceiptMetadata,
    ReceiptWord,
)

SPROUTS_IMAGE = "3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f"
COSTCO_IMAGE = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d"

RECEIPTS = {
    (SPROUTS_IMAGE, 1): (
        "Sprouts Farmers Market",
        [
            "SPROUTS FARMERS MARKET",
            "ORGANIC BANANAS 1.99",
            "ALMOND MILK 3.49",
            "-----",
            "GRAND TOTAL 5.48",
        ],
    ),
    (COSTCO_IMAGE, 2): (
        "Costco Wholesale",
        ["COSTCO WHOLESALE", "KIRKLAND WATER 4.99", "TOTAL 4.99"],
    ),
}


def receipt_entities(
    receipts: dict = RECEIPTS,
) -> tuple[list[ReceiptLine], list[ReceiptWord], list[ReceiptMetadata]]:
    lines, words, metadata = [], [], []
    for (image_id, receipt_id), (merchant, texts) in receipts.items():
        metadata.append(
            ReceiptMetadata(
                image_id,
                receipt_id,
                merchant_name=merchant.upper(),
                canonical_merchant_name=merchant,
            )
        )
        for line_number, text in enumerate(texts, start=1):
            y = 0.05 + (line_number - 1) * 0.15
            lines.append(
                ReceiptLine(
                    image_id,
                    receipt_id,
                    line_number,
                    text,
                    BoundingBox(0.1, y, 0.8, 0.05),
                    confidence=0.98,
                )
            )
            parts = text.split()
            for word_number, part in enumerate(parts, start=1):
                width = 0.8 / len(parts)
                box = BoundingBox(0.1 + (word_number - 1) * width, y, width * 0.9, 0.05)
                words.append(
                    ReceiptWord(
                        image_id,
                        receipt_id,
                        line_number,
                        word_number,
                        part,
                        box,
                        confidence=0.97,
                        is_noise=not any(c.isalnum() for c in part),
                    )
                )
    return lines, words, metadata


def seed(
    dynamo: ReceiptDynamoClient, receipts: dict = RECEIPTS
) -> tuple[list[ReceiptLine], list[ReceiptWord]]:
    lines, words, metadata = receipt_entities(receipts)
    dynamo.put_many([*lines, *words, *metadata])
    return lines, words
