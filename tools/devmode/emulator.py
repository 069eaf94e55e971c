"""`invoke --serve`: the invoke endpoint of AWS's Runtime Interface Emulator in front of one warm
function, so `curl -XPOST localhost:9000/2015-03-31/functions/function/invocations -d '{}'` and
`aws lambda invoke --endpoint-url http://localhost:9000 --function-name function` work unchanged.

One instance serves one invocation at a time, as in Lambda: concurrent requests wait in a
queue and are answered in the order they arrived.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tools.devmode.function import Function, Outcome
from tools.devmode.runtime_api import QuietServer

INVOKE_PATH = re.compile(r"/2015-03-31/functions/[^/]+/invocations")


@dataclass
class Pending:
    event: bytes
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


class Emulator:
    def __init__(self, function: Function, port: int, host: str = "127.0.0.1"):
        self.function = function
        self.pending: queue.Queue[Pending | None] = queue.Queue()
        self.arrivals = (
            threading.Lock()
        )  # numbers requests in the order they are queued
        self.received = 0
        self.busy = 0  # 1 while an invocation runs
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status: int, body: bytes, headers: dict[str, str]):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not INVOKE_PATH.fullmatch(self.path.split("?", 1)[0]):
                    message = b'{"message": "POST /2015-03-31/functions/function/invocations"}'
                    return self.reply(404, message, {})
                outcome = emulator.submit(body or b"{}")
                if outcome is None:
                    message = b'{"message": "devmode failed to run the invocation; its error is in the log"}'
                    return self.reply(500, message, {})
                headers = {"X-Amz-Executed-Version": "$LATEST"}
                if not outcome.ok:
                    headers["X-Amz-Function-Error"] = "Unhandled"
                self.reply(200, outcome.payload, headers)

        self.server = QuietServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.url = (
            f"http://{host}:{self.port}/2015-03-31/functions/function/invocations"
        )
        self.worker = threading.Thread(
            target=self._work, name="invocations", daemon=True
        )

    def submit(self, event: bytes) -> Outcome | None:
        """The invocation's outcome, after every invocation submitted before it; None if devmode failed."""
        pending = Pending(event)
        with self.arrivals:
            self.received += 1
            ahead = self.pending.qsize() + self.busy
            print(
                f"devmode: request {self.received} received, {ahead} ahead of it",
                file=sys.stderr,
                flush=True,
            )
            self.pending.put(pending)
        pending.done.wait()
        return pending.outcome

    def _work(self) -> None:
        while (pending := self.pending.get()) is not None:
            self.busy = 1
            try:
                pending.outcome = self.function.invoke(pending.event)
            except Exception:  # noqa: BLE001 - the waiting request still needs an answer
                traceback.print_exc()
            finally:
                self.busy = 0
                pending.done.set()

    def serve_forever(self) -> None:
        self.worker.start()
        try:
            self.server.serve_forever()
        finally:
            self.pending.put(None)
            self.worker.join(timeout=600)
            self.server.server_close()

    def shutdown(self) -> None:
        self.server.shutdown()
