"""The batch lifecycle of the fake: how a batch moves through its statuses and what it outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.pipeline.fake_openai.embeddings import EMBEDDING_DIMENSIONS, fake_embedding

WAITING = ("validating", "in_progress", "finalizing")
WRONG_DIMENSIONS = 256
# The model takes 8192 tokens; the fake counts a token per 4 characters, as OpenAI's guide does.
MAX_INPUT_CHARACTERS = 8192 * 4


@dataclass
class BatchPlan:
    """How the next created batches behave; request numbers below count from 0 in input order.

    Each retrieve moves a waiting batch one step: `validating_polls` retrieves answer
    validating, then `in_progress_polls` in_progress, `finalizing_polls` finalizing, then the
    batch reaches `outcome`. A cancelled batch answers cancelling `cancelling_polls` times. Input that OpenAI would reject fails the batch at validation with
    `errors.data[].line`, whatever the outcome.

    - outcome "expired": requests below `completed_requests` have output, the rest are in the
      error file as batch_expired. "cancelled": the batch is cancelled (as by an operator) with
      the same partial output; the rest appear in neither file. "failed": errors.data without a
      line (an OpenAI-side failure).
    - `status_codes`: request number -> HTTP status of a non-200 line in the output file.
    - `errored`: request numbers written to the error file of an otherwise completed batch.
    - `wrong_dimensions`: request numbers whose embedding has WRONG_DIMENSIONS values.
    - `reverse_output`: output lines in reverse order (OpenAI does not keep input order).
    """

    outcome: str = "completed"
    validating_polls: int = 0
    in_progress_polls: int = 0
    finalizing_polls: int = 0
    cancelling_polls: int = 1
    completed_requests: int = 0
    status_codes: dict[int, int] = field(default_factory=dict)
    errored: set[int] = field(default_factory=set)
    wrong_dimensions: set[int] = field(default_factory=set)
    reverse_output: bool = False


StoreFile = Callable[[bytes, str, str], dict[str, Any]]


def new_batch(
    batch_id: str, request: dict[str, Any], created_at: int
) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": request["endpoint"],
        "errors": None,
        "input_file_id": request["input_file_id"],
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
        "in_progress_at": None,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "expires_at": created_at + 86400,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": request.get("metadata"),
    }


def advance(
    batch: dict[str, Any],
    plan: BatchPlan,
    polls: int,
    content: bytes,
    store_file: StoreFile,
    now: int,
) -> None:
    """Moves a batch on by one retrieve (`polls` counts retrieves so far, this one included)."""
    if batch["status"] == "cancelling":
        if polls > plan.cancelling_polls:
            _finish(batch, plan, content, store_file, now, "cancelled")
        return
    if batch["status"] not in WAITING:
        return
    if batch["status"] == "validating":
        problems = validate_input(content)
        if problems:
            batch["status"], batch["failed_at"] = "failed", now
            batch["errors"] = {"object": "list", "data": problems}
            return
    steps = ["validating"] * plan.validating_polls
    steps += ["in_progress"] * plan.in_progress_polls
    steps += ["finalizing"] * plan.finalizing_polls
    if polls <= len(steps):
        status = steps[polls - 1]
        if status != batch["status"]:
            batch["status"], batch[f"{status}_at"] = status, now
        return
    if plan.outcome == "failed":
        batch["status"], batch["failed_at"] = "failed", now
        batch["errors"] = {
            "object": "list",
            "data": [
                {
                    "code": "server_error",
                    "message": "The batch failed (injected).",
                    "param": None,
                    "line": None,
                }
            ],
        }
        return
    if plan.outcome == "cancelled":
        cancel(batch, now)  # as an operator would; the next retrieve finds it cancelled
        return
    _finish(batch, plan, content, store_file, now, plan.outcome)


def cancel(batch: dict[str, Any], now: int) -> None:
    if batch["status"] in WAITING:
        batch["status"], batch["cancelling_at"] = "cancelling", now


def _finish(
    batch: dict[str, Any],
    plan: BatchPlan,
    content: bytes,
    store_file: StoreFile,
    now: int,
    outcome: str,
) -> None:
    requests = [json.loads(line) for line in content.splitlines() if line.strip()]
    partial = outcome in ("expired", "cancelled")
    outputs, errors = [], []
    for number, request in enumerate(requests):
        if partial and number >= plan.completed_requests:
            if outcome == "expired":
                errors.append(
                    _error_line(
                        number,
                        request,
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    )
                )
        elif number in plan.errored:
            errors.append(
                _error_line(number, request, "server_error", "Injected request error.")
            )
        elif number in plan.status_codes:
            outputs.append(_status_line(number, request, plan.status_codes[number]))
        else:
            dimensions = (
                WRONG_DIMENSIONS
                if number in plan.wrong_dimensions
                else EMBEDDING_DIMENSIONS
            )
            outputs.append(_embedding_line(number, request, dimensions))
    if plan.reverse_output:
        outputs.reverse()
    if outputs:
        data = "".join(json.dumps(o) + "\n" for o in outputs).encode()
        batch["output_file_id"] = store_file(
            data, "batch_output.jsonl", "batch_output"
        )["id"]
    if errors:
        data = "".join(json.dumps(e) + "\n" for e in errors).encode()
        batch["error_file_id"] = store_file(data, "batch_errors.jsonl", "batch_output")[
            "id"
        ]
    succeeded = sum(1 for o in outputs if o["response"]["status_code"] == 200)
    batch["request_counts"] = {
        "total": len(requests),
        "completed": succeeded,
        "failed": len(requests) - succeeded if outcome == "completed" else len(errors),
    }
    batch["status"], batch[f"{outcome}_at"] = outcome, now


def _embedding_line(
    number: int, request: dict[str, Any], dimensions: int
) -> dict[str, Any]:
    inputs = request["body"]["input"]
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    return {
        "id": f"batch_req_{number:06d}",
        "custom_id": request["custom_id"],
        "response": {
            "status_code": 200,
            "request_id": f"req_{number:06d}",
            "body": {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": fake_embedding(t, dimensions),
                    }
                    for i, t in enumerate(texts)
                ],
                "model": request["body"]["model"],
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            },
        },
        "error": None,
    }


def _status_line(number: int, request: dict[str, Any], status: int) -> dict[str, Any]:
    code = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
    return {
        "id": f"batch_req_{number:06d}",
        "custom_id": request["custom_id"],
        "response": {
            "status_code": status,
            "request_id": f"req_{number:06d}",
            "body": {
                "error": {
                    "message": f"Injected HTTP {status}.",
                    "type": code,
                    "param": None,
                    "code": code,
                }
            },
        },
        "error": None,
    }


def _error_line(
    number: int, request: dict[str, Any], code: str, message: str
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{number:06d}",
        "custom_id": request["custom_id"],
        "response": None,
        "error": {"code": code, "message": message},
    }


def validate_input(content: bytes) -> list[dict[str, Any]]:
    """What OpenAI's validation would reject, as errors.data entries naming the line (from 1)."""
    problems: list[dict[str, Any]] = []
    seen: set[Any] = set()

    def problem(line: int, message: str, param: str | None = None) -> None:
        problems.append(
            {
                "code": "invalid_request",
                "message": message,
                "param": param,
                "line": line,
            }
        )

    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        return [
            {
                "code": "empty_file",
                "message": "The input file is empty.",
                "param": None,
                "line": None,
            }
        ]
    for number, line in enumerate(lines, start=1):
        try:
            request = json.loads(line)
        except ValueError:
            problem(number, "This line is not valid JSON.")
            continue
        if not isinstance(request, dict):
            problem(number, "Each line must be a JSON object.")
            continue
        if request.get("method") != "POST" or request.get("url") != "/v1/embeddings":
            problem(number, "Expected method POST and url /v1/embeddings.", "url")
        if request.get("custom_id") in seen:
            problem(
                number,
                f"Duplicate custom_id {request.get('custom_id')!r}.",
                "custom_id",
            )
        seen.add(request.get("custom_id"))
        body = request.get("body") or {}
        if not isinstance(body, dict) or not body.get("model") or not body.get("input"):
            problem(number, "The body needs a model and a non-empty input.", "body")
        elif len(str(body["input"])) > MAX_INPUT_CHARACTERS:
            problem(
                number,
                "The input exceeds the model's maximum context length of 8192 tokens.",
                "body.input",
            )
    return problems
