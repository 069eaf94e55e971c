"""What is sent to OpenAI's batch API: custom ids, embedding inputs and the NDJSON request file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from receipt_dynamo import (
    CUSTOM_ID_FORM,
    BatchType,
    EntityError,
    ReceiptLine,
    ReceiptWord,
    parse_custom_id,
    target_of,
)

from receipt_label.errors import InvalidInput

MODEL = "text-embedding-3-small"
EMBEDDING_DIMENSIONS = (
    1536  # what MODEL returns; a vector of another size is a failed request
)
ENDPOINT = "/v1/embeddings"
EDGE = "<EDGE>"
MAX_REQUESTS_PER_BATCH = 50_000


def is_noise_text(text: str) -> bool:
    """Text without a letter or digit (rules, dots, stray punctuation) carries nothing to embed."""
    return not any(character.isalnum() for character in text)


def position_label(entity: ReceiptLine | ReceiptWord) -> str:
    """Where on the receipt the box sits, in words: coordinates are normalized, origin top left."""
    x, y = entity.bounding_box.center
    vertical = "top" if y < 1 / 3 else "middle" if y < 2 / 3 else "bottom"
    horizontal = "left" if x < 1 / 3 else "center" if x < 2 / 3 else "right"
    return f"{vertical}-{horizontal}"


def word_neighbors(words: Iterable[ReceiptWord]) -> dict[str, tuple[str, str]]:
    """Each word's left and right neighbour on its line (EDGE at the ends), by custom_id."""
    by_line: dict[tuple[str, int, int], list[ReceiptWord]] = {}
    for word in words:
        by_line.setdefault((word.image_id, word.receipt_id, word.line_id), []).append(
            word
        )
    neighbors = {}
    for line_words in by_line.values():
        line_words.sort(key=lambda w: (w.bounding_box.x, w.word_id))
        for index, word in enumerate(line_words):
            left = line_words[index - 1].text if index > 0 else EDGE
            right = line_words[index + 1].text if index + 1 < len(line_words) else EDGE
            neighbors[target_of(word).custom_id] = (left, right)
    return neighbors


def line_neighbors(lines: Iterable[ReceiptLine]) -> dict[str, tuple[str, str]]:
    """Each line's previous and next line of the same receipt (EDGE at the ends), by custom_id."""
    by_receipt: dict[tuple[str, int], list[ReceiptLine]] = {}
    for line in lines:
        by_receipt.setdefault((line.image_id, line.receipt_id), []).append(line)
    neighbors = {}
    for receipt_lines in by_receipt.values():
        receipt_lines.sort(key=lambda line: line.line_id)
        for index, line in enumerate(receipt_lines):
            previous = receipt_lines[index - 1].text if index > 0 else EDGE
            following = (
                receipt_lines[index + 1].text
                if index + 1 < len(receipt_lines)
                else EDGE
            )
            neighbors[target_of(line).custom_id] = (previous, following)
    return neighbors


def word_input(word: ReceiptWord, left: str, right: str) -> str:
    return f"{word.text} | left: {left} | right: {right} | position: {position_label(word)}"


@dataclass(frozen=True)
class EmbeddingRequest:
    custom_id: str
    input: str

    def to_json(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": MODEL, "input": self.input},
        }


def line_requests(lines: Iterable[ReceiptLine]) -> list[EmbeddingRequest]:
    return [EmbeddingRequest(target_of(line).custom_id, line.text) for line in lines]


def word_requests(
    words: Iterable[ReceiptWord], receipt_words: Iterable[ReceiptWord]
) -> list[EmbeddingRequest]:
    """Requests for `words`; `receipt_words` are all words of their receipts, for the neighbours."""
    neighbors = word_neighbors(receipt_words)
    requests = []
    for word in words:
        custom_id = target_of(word).custom_id
        left, right = neighbors.get(custom_id, (EDGE, EDGE))
        requests.append(EmbeddingRequest(custom_id, word_input(word, left, right)))
    return requests


def to_ndjson(requests: Iterable[EmbeddingRequest]) -> bytes:
    return b"".join(
        json.dumps(r.to_json(), sort_keys=True).encode() + b"\n" for r in requests
    )


def parse_ndjson(data: bytes, source: str) -> tuple[BatchType, list[EmbeddingRequest]]:
    """Validates a whole request file before anything acts on it; errors name the line and the fix."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{source} is not UTF-8 text; write the NDJSON file as UTF-8"
        ) from None
    requests: list[EmbeddingRequest] = []
    seen: set[str] = set()
    kinds: set[bool] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InvalidInput(
                f"{where} is not valid JSON ({error.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise InvalidInput(
                f"{where} is a JSON {type(record).__name__}; each line must be one JSON object"
            )
        if record.get("method") != "POST" or record.get("url") != ENDPOINT:
            raise InvalidInput(
                f'{where} must have "method": "POST" and "url": "{ENDPOINT}"'
            )
        try:
            target = parse_custom_id(record.get("custom_id"))
        except EntityError as error:
            raise InvalidInput(f"{where}: {error}") from None
        custom_id = target.custom_id
        if custom_id in seen:
            raise InvalidInput(
                f"{where} repeats custom_id {custom_id}; each request needs its own"
            )
        body = record.get("body")
        if not isinstance(body, dict) or body.get("model") != MODEL:
            raise InvalidInput(f'{where} must have a body with "model": "{MODEL}"')
        embedding_input = body.get("input")
        if not isinstance(embedding_input, str) or not embedding_input.strip():
            raise InvalidInput(f"{where} must have a non-empty string body.input")
        seen.add(custom_id)
        kinds.add(target.is_word)
        requests.append(EmbeddingRequest(custom_id, embedding_input))
    if not requests:
        raise InvalidInput(
            f"{source} has no requests; expected one JSON request per line with custom_id {CUSTOM_ID_FORM}"
        )
    if len(kinds) > 1:
        raise InvalidInput(
            f"{source} mixes line and word requests; put lines and words in separate files"
        )
    if len(requests) > MAX_REQUESTS_PER_BATCH:
        raise InvalidInput(
            f"{source} has {len(requests)} requests; OpenAI takes at most {MAX_REQUESTS_PER_BATCH}"
        )
    batch_type = (
        BatchType.WORD_EMBEDDING if kinds == {True} else BatchType.LINE_EMBEDDING
    )
    return batch_type, requests
