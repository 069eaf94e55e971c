"""What an ended OpenAI batch produced: a vector per request, or why a request has none.

Reads the output file and the error file (a completed batch can have both), matches lines by
custom_id (OpenAI does not keep input order), and judges each request: an embedding of the
model's size, or a failure that is worth retrying (expired, cancelled, rate limited, server
errors, malformed output) or not (input that OpenAI rejected).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from receipt_label.logs import get_logger, log

logger = get_logger("receipt_label.pipeline")

# A line whose embedding failed this many times stays FAILED instead of going back to NONE.
MAX_EMBEDDING_ATTEMPTS = 3
_RETRYABLE_HTTP = {408, 409, 429}


@dataclass(frozen=True)
class LineFailure:
    reason: str
    retry: bool  # False: the request itself was rejected; sending it again cannot help


@dataclass
class BatchOutput:
    embeddings: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, LineFailure] = field(default_factory=dict)


def requested_ids(content: bytes) -> list[tuple[int, str]]:
    """(line number from 1, custom_id) of each request in a batch input file."""
    requested = []
    for number, line in enumerate(content.splitlines(), start=1):
        try:
            requested.append((number, json.loads(line)["custom_id"]))
        except (ValueError, KeyError, TypeError):
            continue  # not one of ours; OpenAI reports it in errors.data
    return requested


def read_batch_output(client: Any, batch: Any, dimensions: int) -> BatchOutput:
    """Judges every request of an ended batch (completed, expired, cancelled or failed)."""
    requested = requested_ids(client.files.content(batch.input_file_id).content)
    wanted = {custom_id for _, custom_id in requested}
    output = BatchOutput()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            _read_lines(
                client.files.content(file_id).content, wanted, dimensions, output
            )
    general = "no output for this request"
    if batch.status == "failed":
        errors = list(getattr(batch.errors, "data", None) or [])
        by_line = {e.line: e for e in errors if e.line}
        for number, custom_id in requested:
            error = by_line.get(number)
            if error is not None:
                output.failures[custom_id] = LineFailure(
                    f"{error.code}: {error.message} (input line {number})", retry=False
                )
        general = "; ".join(f"{e.code}: {e.message}" for e in errors if not e.line)
        general = f"the batch failed ({general or 'other requests were rejected'})"
    elif batch.status in ("expired", "cancelled"):
        general = f"no output before the batch was {batch.status}"
    for _, custom_id in requested:
        if custom_id not in output.embeddings and custom_id not in output.failures:
            output.failures[custom_id] = LineFailure(general, retry=True)
    return output


def _read_lines(
    content: bytes, wanted: set[str], dimensions: int, output: BatchOutput
) -> None:
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            custom_id = record["custom_id"]
        except (ValueError, KeyError, TypeError):
            log(logger, logging.WARNING, "unreadable batch output line", line=number)
            continue
        if custom_id not in wanted:
            log(
                logger,
                logging.WARNING,
                "batch output names an id that was not requested",
                custom_id=custom_id,
            )
            continue
        if custom_id in output.embeddings:
            continue
        vector, failure = _judge(record, dimensions)
        if vector is not None:
            output.embeddings[custom_id] = vector
            output.failures.pop(custom_id, None)
        else:
            output.failures[custom_id] = failure


def _judge(
    record: dict[str, Any], dimensions: int
) -> tuple[list[float] | None, LineFailure | None]:
    error = record.get("error")
    if error:
        detail = error if isinstance(error, dict) else {"message": str(error)}
        reason = (
            f"{detail.get('code', 'error')}: {detail.get('message', 'request failed')}"
        )
        return None, LineFailure(reason, retry=True)
    response = record.get("response") or {}
    status = response.get("status_code")
    if status != 200:
        body = response.get("body") or {}
        detail = body.get("error") or {} if isinstance(body, dict) else {}
        reason = (
            f"HTTP {status} {detail.get('code', 'error')}: "
            f"{detail.get('message', 'request failed')}"
        )
        retry = (
            not isinstance(status, int) or status in _RETRYABLE_HTTP or status >= 500
        )
        return None, LineFailure(reason, retry=retry)
    try:
        vector = [float(v) for v in response["body"]["data"][0]["embedding"]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None, LineFailure("malformed embedding in the batch output", retry=True)
    if len(vector) != dimensions:
        return None, LineFailure(
            f"the embedding has {len(vector)} dimensions; the model gives {dimensions}",
            retry=True,
        )
    if not all(math.isfinite(v) for v in vector):
        return None, LineFailure("non-finite embedding in the batch output", retry=True)
    return vector, None
