"""Embedding inputs, neighbours, and the NDJSON request file's round trip and validation."""

import json

import pytest
from receipt_dynamo import BatchType, BoundingBox, ReceiptLine, ReceiptWord
from receipt_label.embedding_requests import (
    EDGE,
    is_noise_text,
    line_neighbors,
    line_requests,
    parse_ndjson,
    to_ndjson,
    word_requests,
)
from receipt_label.errors import InvalidInput

IMAGE = "3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f"


def _word(line_id, word_id, text, x, y=0.1):
    return ReceiptWord(
        IMAGE, 1, line_id, word_id, text, BoundingBox(x, y, 0.1, 0.02), 0.9
    )


def test_word_inputs_carry_the_word_its_neighbours_and_its_position():
    words = [
        _word(1, 2, "MILK", 0.4),
        _word(1, 1, "ALMOND", 0.1),
        _word(1, 3, "3.49", 0.8),
        _word(2, 1, "TOTAL", 0.1, 0.9),
    ]
    inputs = {
        r.custom_id.rsplit("#", 1)[-1]: r.input for r in word_requests(words, words)
    }
    assert inputs["00002"] == "MILK | left: ALMOND | right: 3.49 | position: top-center"
    requests = word_requests([words[3]], words)
    assert (
        requests[0].input
        == f"TOTAL | left: {EDGE} | right: {EDGE} | position: bottom-left"
    )
    assert requests[0].custom_id == f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00002#WORD#00001"


def test_line_inputs_are_the_line_text_and_neighbours_follow_line_order():
    lines = [
        ReceiptLine(IMAGE, 1, n, t, BoundingBox(0, 0, 1, 0.1), 1.0)
        for n, t in [(2, "B"), (1, "A"), (3, "C")]
    ]
    assert [r.input for r in line_requests(lines)] == ["B", "A", "C"]
    neighbors = line_neighbors(lines)
    assert neighbors[f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00002"] == ("A", "C")
    assert neighbors[f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00001"] == (EDGE, "B")


def test_noise_is_text_without_letters_or_digits():
    assert is_noise_text("-----") and is_noise_text("  ") and is_noise_text("*.*")
    assert not is_noise_text("$5") and not is_noise_text("é")


def test_ndjson_round_trip_is_openai_batch_format():
    words = [_word(1, 1, "A", 0.1), _word(1, 2, "B", 0.5)]
    data = to_ndjson(word_requests(words, words))
    first = json.loads(data.splitlines()[0])
    assert first == {
        "custom_id": f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00001#WORD#00001",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {
            "model": "text-embedding-3-small",
            "input": "A | left: <EDGE> | right: B | position: top-left",
        },
    }
    batch_type, parsed = parse_ndjson(data, "file.ndjson")
    assert batch_type is BatchType.WORD_EMBEDDING
    assert to_ndjson(parsed) == data


def test_ndjson_errors_name_the_file_and_line():
    with pytest.raises(InvalidInput, match=r"^s3://b/k line 1 is not valid JSON"):
        parse_ndjson(b"{", "s3://b/k")
    with pytest.raises(InvalidInput, match="is not UTF-8 text"):
        parse_ndjson(b"\xff\xfe", "s3://b/k")
