"""A small local HTTP server speaking the part of OpenAI's API that the batch pipeline uses.

It implements files (upload, retrieve, content) and batches (create, retrieve, cancel) for
`/v1/embeddings`, with deterministic fake embeddings: texts that share words and character
trigrams get similar vectors, so similarity tests have predictable answers. Faults are
scripted per test: HTTP errors on chosen routes, and batches that expire with partial output,
fail or get cancelled.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import threading
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMBEDDING_DIMENSIONS = 1536
API_KEY = "sk-test-fake-openai-key-do-not-log"
CREATED_AT = 1_700_000_000


def _bucket(feature: str) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    index = int.from_bytes(digest[:4], "big") % EMBEDDING_DIMENSIONS
    sign = 1.0 if digest[4] & 1 else -1.0
    return index, sign


def fake_embedding(text: str) -> list[float]:
    """A unit vector built from the text's words (weight 1) and character trigrams (weight 0.3)."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    lowered = text.lower()
    for word in re.findall(r"[a-z0-9.]+", lowered):
        index, sign = _bucket("w:" + word)
        vector[index] += sign
    padded = f"  {lowered}  "
    for start in range(len(padded) - 2):
        index, sign = _bucket("t:" + padded[start : start + 3])
        vector[index] += 0.3 * sign
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@dataclass
class BatchPlan:
    """How the next created batches end: after `in_progress_polls` retrieves they reach `outcome`.

    For "expired", the first `expire_after` requests have output and the rest are reported
    in the error file as batch_expired.
    """

    outcome: str = "completed"
    in_progress_polls: int = 0
    expire_after: int = 0


@dataclass
class InjectedFailure:
    method: str
    path_pattern: str
    remaining: int
    status: int = 500


@dataclass
class FakeOpenAIState:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_contents: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_plans: dict[str, BatchPlan] = field(default_factory=dict)
    batch_polls: dict[str, int] = field(default_factory=dict)
    plan: BatchPlan = field(default_factory=BatchPlan)
    failures: list[InjectedFailure] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeOpenAIServer:
    """Runs the fake API on 127.0.0.1 in a background thread; `base_url` is what the client needs."""

    def __init__(self, api_key: str = API_KEY):
        self.api_key = api_key
        self.state = FakeOpenAIState()
        handler = type(
            "Handler", (_Handler,), {"server_state": self.state, "api_key": api_key}
        )
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-openai", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(
        self, method: str, path_pattern: str, times: int = 1, status: int = 500
    ) -> None:
        with self.state.lock:
            self.state.failures.append(
                InjectedFailure(method, path_pattern, times, status)
            )

    def set_plan(self, **plan: Any) -> None:
        with self.state.lock:
            self.state.plan = BatchPlan(**plan)

    def count_requests(
        self, method: str, path_pattern: str, status: int | None = None
    ) -> int:
        with self.state.lock:
            return sum(
                1
                for m, p, s in self.state.requests
                if m == method
                and re.fullmatch(path_pattern, p)
                and (status is None or s == status)
            )

    def batch(self, batch_id: str) -> dict[str, Any]:
        with self.state.lock:
            return dict(self.state.batches[batch_id])

    def input_lines(self, batch_id: str) -> list[dict[str, Any]]:
        with self.state.lock:
            content = self.state.file_contents[
                self.state.batches[batch_id]["input_file_id"]
            ]
        return [json.loads(line) for line in content.splitlines() if line.strip()]


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIState
    api_key: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        status, payload, content_type = self._route(method, path, body)
        with self.server_state.lock:
            self.server_state.requests.append((method, path, status))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any, str]:
        state = self.server_state
        if self.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        with state.lock:
            for failure in state.failures:
                if (
                    failure.remaining > 0
                    and failure.method == method
                    and re.fullmatch(failure.path_pattern, path)
                ):
                    failure.remaining -= 1
                    return _error(failure.status, "server_error", "Injected failure.")
            routes = [
                ("POST", r"/v1/files", lambda: self._upload(body)),
                ("GET", r"/v1/files/([^/]+)", lambda m: self._file(m.group(1))),
                (
                    "GET",
                    r"/v1/files/([^/]+)/content",
                    lambda m: self._content(m.group(1)),
                ),
                ("POST", r"/v1/batches", lambda: self._create_batch(body)),
                (
                    "GET",
                    r"/v1/batches/([^/]+)",
                    lambda m: self._retrieve_batch(m.group(1)),
                ),
                (
                    "POST",
                    r"/v1/batches/([^/]+)/cancel",
                    lambda m: self._cancel_batch(m.group(1)),
                ),
            ]
            for route_method, pattern, action in routes:
                match = re.fullmatch(pattern, path)
                if match and route_method == method:
                    return action(match) if match.groups() else action()
        return _error(404, "not_found", f"Unknown route {method} {path}.")

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.server_state.ids):06d}"

    def _store_file(
        self, content: bytes, filename: str, purpose: str
    ) -> dict[str, Any]:
        file_id = self._new_id("file-")
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": CREATED_AT,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.server_state.files[file_id] = record
        self.server_state.file_contents[file_id] = content
        return record

    def _upload(self, body: bytes) -> tuple[int, Any, str]:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            return _error(400, "invalid_request_error", "Expected multipart/form-data.")
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, tuple[bytes, str | None]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_payload(decode=True) or b"", part.get_filename())
        if "file" not in fields or "purpose" not in fields:
            return _error(
                400, "invalid_request_error", "Both 'file' and 'purpose' are required."
            )
        content, filename = fields["file"]
        purpose = fields["purpose"][0].decode()
        if purpose == "batch":
            problem = _validate_batch_input(content)
            if problem:
                return _error(400, "invalid_request_error", problem)
        return (
            200,
            self._store_file(content, filename or "upload", purpose),
            "application/json",
        )

    def _file(self, file_id: str) -> tuple[int, Any, str]:
        if file_id not in self.server_state.files:
            return _error(404, "not_found", f"No such File object: {file_id}")
        return 200, self.server_state.files[file_id], "application/json"

    def _content(self, file_id: str) -> tuple[int, Any, str]:
        if file_id not in self.server_state.files:
            return _error(404, "not_found", f"No such File object: {file_id}")
        return 200, self.server_state.file_contents[file_id], "application/octet-stream"

    def _create_batch(self, body: bytes) -> tuple[int, Any, str]:
        request = json.loads(body or b"{}")
        input_file_id = request.get("input_file_id")
        if input_file_id not in self.server_state.files:
            return _error(
                400,
                "invalid_request_error",
                f"Unknown input_file_id {input_file_id!r}.",
            )
        if (
            request.get("endpoint") != "/v1/embeddings"
            or request.get("completion_window") != "24h"
        ):
            return _error(
                400,
                "invalid_request_error",
                "This fake only runs /v1/embeddings batches with 24h.",
            )
        batch_id = self._new_id("batch_")
        self.server_state.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": request["endpoint"],
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": CREATED_AT,
            "expires_at": CREATED_AT + 86400,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": request.get("metadata"),
        }
        self.server_state.batch_plans[batch_id] = self.server_state.plan
        self.server_state.batch_polls[batch_id] = 0
        return 200, self.server_state.batches[batch_id], "application/json"

    def _cancel_batch(self, batch_id: str) -> tuple[int, Any, str]:
        batch = self.server_state.batches.get(batch_id)
        if batch is None:
            return _error(404, "not_found", f"No such batch: {batch_id}")
        if batch["status"] in ("validating", "in_progress"):
            batch["status"] = "cancelled"
        return 200, batch, "application/json"

    def _retrieve_batch(self, batch_id: str) -> tuple[int, Any, str]:
        state = self.server_state
        batch = state.batches.get(batch_id)
        if batch is None:
            return _error(404, "not_found", f"No such batch: {batch_id}")
        if batch["status"] in ("validating", "in_progress"):
            plan = state.batch_plans[batch_id]
            state.batch_polls[batch_id] += 1
            if state.batch_polls[batch_id] <= plan.in_progress_polls:
                batch["status"] = "in_progress"
            else:
                self._finish(batch, plan)
        return 200, batch, "application/json"

    def _finish(self, batch: dict[str, Any], plan: BatchPlan) -> None:
        requests = [
            json.loads(line)
            for line in self.server_state.file_contents[
                batch["input_file_id"]
            ].splitlines()
        ]
        batch["request_counts"]["total"] = len(requests)
        if plan.outcome in ("failed", "cancelled"):
            batch["status"] = plan.outcome
            if plan.outcome == "failed":
                batch["errors"] = {
                    "object": "list",
                    "data": [{"code": "server_error", "message": "Injected."}],
                }
            return
        outputs, errors = [], []
        for number, request in enumerate(requests):
            if plan.outcome == "completed" or number < plan.expire_after:
                outputs.append(_embedding_output(number, request))
            else:
                errors.append(
                    {
                        "id": f"batch_req_{number:06d}",
                        "custom_id": request["custom_id"],
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed in time.",
                        },
                    }
                )
        if outputs:
            content = "".join(json.dumps(o) + "\n" for o in outputs).encode()
            batch["output_file_id"] = self._store_file(
                content, "batch_output.jsonl", "batch_output"
            )["id"]
        if errors:
            content = "".join(json.dumps(e) + "\n" for e in errors).encode()
            batch["error_file_id"] = self._store_file(
                content, "batch_errors.jsonl", "batch_output"
            )["id"]
        batch["request_counts"].update(completed=len(outputs), failed=len(errors))
        batch["status"] = plan.outcome


def _embedding_output(number: int, request: dict[str, Any]) -> dict[str, Any]:
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
                    {"object": "embedding", "index": i, "embedding": fake_embedding(t)}
                    for i, t in enumerate(texts)
                ],
                "model": request["body"]["model"],
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            },
        },
        "error": None,
    }


def _validate_batch_input(content: bytes) -> str | None:
    seen = set()
    for number, line in enumerate(content.splitlines(), start=1):
        try:
            request = json.loads(line)
        except ValueError:
            return f"Line {number} is not valid JSON."
        if request.get("method") != "POST" or request.get("url") != "/v1/embeddings":
            return f"Line {number}: expected method POST and url /v1/embeddings."
        if request.get("custom_id") in seen:
            return f"Line {number}: duplicate custom_id {request.get('custom_id')!r}."
        seen.add(request.get("custom_id"))
        body = request.get("body") or {}
        if not body.get("model") or not body.get("input"):
            return f"Line {number}: body needs model and a non-empty input."
    return None if seen else "The input file is empty."


def _error(status: int, code: str, message: str) -> tuple[int, Any, str]:
    return (
        status,
        {"error": {"message": message, "type": code, "param": None, "code": code}},
        "application/json",
    )
