"""The fake's HTTP server: routes, authentication, scripted faults and what tests inspect."""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.pipeline.fake_openai import batches
from tests.pipeline.fake_openai.batches import BatchPlan

API_KEY = "sk-test-fake-openai-key-do-not-log"
MAX_LIST_LIMIT = 100


@dataclass
class InjectedFault:
    method: str
    path_pattern: str
    remaining: int
    status: int = 500  # 0: act, then drop the connection without answering


@dataclass
class FakeOpenAIState:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_contents: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_plans: dict[str, BatchPlan] = field(default_factory=dict)
    batch_polls: dict[str, int] = field(default_factory=dict)
    plan: BatchPlan = field(default_factory=BatchPlan)
    faults: list[InjectedFault] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeOpenAIServer:
    """Runs the fake API on 127.0.0.1 (port 0) in a background thread; `base_url` is what the client needs."""

    def __init__(self, api_key: str = API_KEY, clock: Callable[[], float] = time.time):
        self.api_key = api_key
        self.state = FakeOpenAIState()
        handler = type(
            "Handler",
            (_Handler,),
            {
                "server_state": self.state,
                "api_key": api_key,
                "clock": staticmethod(clock),
            },
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
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError(
                "the fake OpenAI server's thread did not stop within 30 s"
            )

    def fail_next(
        self, method: str, path_pattern: str, times: int = 1, status: int = 500
    ) -> None:
        """The next `times` matching requests get `status` and change nothing."""
        with self.state.lock:
            self.state.faults.append(InjectedFault(method, path_pattern, times, status))

    def lose_response_next(
        self, method: str, path_pattern: str, times: int = 1
    ) -> None:
        """The next `times` matching requests are carried out, then the connection drops unanswered."""
        with self.state.lock:
            self.state.faults.append(InjectedFault(method, path_pattern, times, 0))

    def set_plan(self, **plan: Any) -> None:
        with self.state.lock:
            self.state.plan = BatchPlan(**plan)

    def count_requests(
        self, method: str, path_pattern: str, status: int | None = None
    ) -> int:
        """Requests answered (status 0: carried out, answer lost) on paths matching the pattern."""
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
            return json.loads(json.dumps(self.state.batches[batch_id]))

    def batch_ids(self) -> list[str]:
        """Every batch created, oldest first: each one would be billed."""
        with self.state.lock:
            return list(self.state.batches)

    def input_lines(self, batch_id: str) -> list[dict[str, Any]]:
        with self.state.lock:
            content = self.state.file_contents[
                self.state.batches[batch_id]["input_file_id"]
            ]
        return [json.loads(line) for line in content.splitlines() if line.strip()]

    def sent_custom_ids(self) -> list[str]:
        """The custom_id of every request in every batch created (a repeat means paid twice)."""
        return [
            line["custom_id"]
            for batch_id in self.batch_ids()
            for line in self.input_lines(batch_id)
        ]


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIState
    api_key: str
    clock: Callable[[], float]
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
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, payload, content_type, lose = self._route(method, url.path, query, body)
        with self.server_state.lock:
            self.server_state.requests.append((method, url.path, 0 if lose else status))
        if lose:
            # The work is done; the client never hears so (as when a proxy or the network fails).
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any, str, bool]:
        state = self.server_state
        if self.headers.get("Authorization") != f"Bearer {self.api_key}":
            return (
                *_error(401, "invalid_api_key", "Incorrect API key provided."),
                False,
            )
        with state.lock:
            lose = False
            for fault in state.faults:
                if (
                    fault.remaining > 0
                    and fault.method == method
                    and re.fullmatch(fault.path_pattern, path)
                ):
                    fault.remaining -= 1
                    if fault.status:
                        return (
                            *_error(fault.status, "server_error", "Injected failure."),
                            False,
                        )
                    lose = True
                    break
            routes = [
                ("POST", r"/v1/files", lambda: self._upload(body)),
                ("GET", r"/v1/files/([^/]+)", lambda m: self._file(m.group(1))),
                (
                    "GET",
                    r"/v1/files/([^/]+)/content",
                    lambda m: self._content(m.group(1)),
                ),
                ("POST", r"/v1/batches", lambda: self._create_batch(body)),
                ("GET", r"/v1/batches", lambda: self._list_batches(query)),
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
                    result = action(match) if match.groups() else action()
                    return (*result, lose)
        return (*_error(404, "not_found", f"Unknown route {method} {path}."), lose)

    def _now(self) -> int:
        return int(self.clock())

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
            "created_at": self._now(),
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
        # Like OpenAI, the lines of a batch input are checked when the batch runs, not here.
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
        input_file = self.server_state.files.get(request.get("input_file_id"))
        if input_file is None or input_file["purpose"] != "batch":
            return _error(
                400,
                "invalid_request_error",
                f"input_file_id {request.get('input_file_id')!r} is not a file uploaded with purpose batch.",
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
        batch = batches.new_batch(batch_id, request, self._now())
        self.server_state.batches[batch_id] = batch
        self.server_state.batch_plans[batch_id] = self.server_state.plan
        self.server_state.batch_polls[batch_id] = 0
        return 200, batch, "application/json"

    def _list_batches(self, query: dict[str, str]) -> tuple[int, Any, str]:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIST_LIMIT:
            return _error(
                400, "invalid_request_error", "limit must be between 1 and 100."
            )
        newest_first = sorted(
            self.server_state.batches.values(),
            key=lambda b: (b["created_at"], b["id"]),
            reverse=True,
        )
        after = query.get("after")
        if after:
            ids = [b["id"] for b in newest_first]
            if after not in ids:
                return _error(404, "not_found", f"No such batch: {after}")
            newest_first = newest_first[ids.index(after) + 1 :]
        page = newest_first[:limit]
        return (
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(newest_first) > limit,
            },
            "application/json",
        )

    def _cancel_batch(self, batch_id: str) -> tuple[int, Any, str]:
        batch = self.server_state.batches.get(batch_id)
        if batch is None:
            return _error(404, "not_found", f"No such batch: {batch_id}")
        if batch["status"] in batches.WAITING:
            batches.cancel(batch, self._now())
            self.server_state.batch_polls[batch_id] = 0
        return 200, batch, "application/json"

    def _retrieve_batch(self, batch_id: str) -> tuple[int, Any, str]:
        state = self.server_state
        batch = state.batches.get(batch_id)
        if batch is None:
            return _error(404, "not_found", f"No such batch: {batch_id}")
        state.batch_polls[batch_id] += 1
        was = batch["status"]
        batches.advance(
            batch,
            state.batch_plans[batch_id],
            state.batch_polls[batch_id],
            state.file_contents[batch["input_file_id"]],
            self._store_file,
            self._now(),
        )
        if batch["status"] == "cancelling" and was != "cancelling":
            state.batch_polls[batch_id] = 0  # counts the retrieves spent cancelling
        return 200, batch, "application/json"


def _error(status: int, code: str, message: str) -> tuple[int, Any, str]:
    return (
        status,
        {"error": {"message": message, "type": code, "param": None, "code": code}},
        "application/json",
    )
