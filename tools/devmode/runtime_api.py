"""The Lambda Runtime API (2018-06-01) that Lambda serves to one function instance.

The runtime long-polls GET /runtime/invocation/next for an event and posts the outcome to
/runtime/invocation/<id>/response or /error, or to /runtime/init/error when it cannot start.
Everything the runtime does is reported, in order, on `happenings` for function.py to act on.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"
TRACE_ID = "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0"


@dataclass(frozen=True)
class Invocation:
    request_id: str
    event: bytes
    deadline_ms: int  # epoch milliseconds, as Lambda-Runtime-Deadline-Ms
    function_arn: str


@dataclass(frozen=True)
class Happening:
    """What the runtime did: 'next' (it waits for an event), 'response', 'error', 'init_error'."""

    kind: str
    request_id: str | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    monotonic: float = field(default_factory=time.monotonic)


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client hangs up."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RuntimeApi:
    def __init__(self, happenings: queue.Queue, host: str = "127.0.0.1"):
        self.happenings = happenings
        self.invocations: queue.Queue[Invocation] = queue.Queue()
        self.stopping = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                # awslambdaric's native client crashes on a /next reply without Content-Type.
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def not_found(self):
                message = f"no route {self.command} {self.path}"
                self.reply(
                    404,
                    json.dumps(
                        {"errorType": "NotFound", "errorMessage": message}
                    ).encode(),
                )

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                if self.path != PREFIX + "/invocation/next":
                    return self.not_found()
                api.happenings.put(Happening("next"))
                while not api.stopping.is_set():
                    try:
                        invocation = api.invocations.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    return self.reply(
                        200,
                        invocation.event,
                        {
                            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                            "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
                            "Lambda-Runtime-Trace-Id": TRACE_ID,
                        },
                    )
                self.close_connection = True

            def do_POST(self):
                body = self.read_body()
                headers = {key.lower(): value for key, value in self.headers.items()}
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if (
                    len(parts) == 3
                    and parts[0] == "invocation"
                    and parts[2] in ("response", "error")
                ):
                    api.happenings.put(Happening(parts[2], parts[1], body, headers))
                elif parts == ["init", "error"]:
                    api.happenings.put(Happening("init_error", None, body, headers))
                else:
                    return self.not_found()
                self.reply(202, b'{"status": "OK"}')

        # A runtime killed in its long poll of /next resets its connection: nothing to report.
        self.server = QuietServer((host, 0), Handler)
        self.address = "{}:{}".format(*self.server.server_address[:2])
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="runtime-api", daemon=True
        )
        self.thread.start()

    def hand_over(self, invocation: Invocation) -> None:
        self.invocations.put(invocation)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)
