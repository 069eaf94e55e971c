"""S3 that misbehaves on cue, for the cache tests: a gate in front of moto and a black hole.

S3Gate is an HTTP proxy on a port of its own (bound to port 0 and kept for the whole test) in
front of moto's S3 server. It records every request (so tests count what reached S3), can be
"down" (connections are closed without an answer) and can hold GETs until released. BlackHole
accepts connections and never answers. Both run threads that close() joins.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from urllib.parse import urlsplit

# Headers that belong to one connection, not to the request or response being forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "expect",
    "content-length",
}


class S3Gate:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self._changed = threading.Condition()
        self._down = False
        self._held_paths: set[str] = set()
        self._release = threading.Event()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def forward(self):
                gate._forward(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever)
        self._thread.start()

    def set_down(self, down: bool) -> None:
        with self._changed:
            self._down = down

    def hold_gets(self, path: str) -> None:
        """GETs of `path` wait (after being counted) until release() is called."""
        self._held_paths.add(path)

    def release(self) -> None:
        self._release.set()

    def count(self, method: str, path_suffix: str = "") -> int:
        with self._changed:
            return sum(
                1
                for seen_method, path in self.requests
                if seen_method == method and path.endswith(path_suffix)
            )

    def wait_for(self, method: str, count: int, path_suffix: str = "", timeout=60):
        """Waits until `count` requests of `method` (to a path ending so) reached the gate."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count(method, path_suffix) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, (
                    f"waited {timeout}s for {count} {method} {path_suffix!r} requests "
                    f"at the S3 gate; saw {self.requests}"
                )
                self._changed.wait(remaining)

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        with self._changed:
            self.requests.append((handler.command, path))
            self._changed.notify_all()
            down = self._down
        if down:  # no answer at all: the client sees its connection closed
            handler.close_connection = True
            return
        if handler.command == "GET" and path in self._held_paths:
            assert self._release.wait(120), "held GET never released"
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.upstream_port, timeout=120
        )
        try:
            headers = {
                name: value
                for name, value in handler.headers.items()
                if name.lower() not in HOP_BY_HOP
            }
            if body is not None:
                headers["Content-Length"] = str(len(body))
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        # A HEAD answer carries the object's length but no body.
        length = response.getheader("Content-Length", "0")
        handler.send_header(
            "Content-Length", length if handler.command == "HEAD" else str(len(data))
        )
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "S3 gate thread did not stop"


class BlackHole:
    """A listening socket that accepts connections and never answers; counts connections."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._socket.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_forever)
        self._thread.start()

    def _accept_forever(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by close()
                return
            self.connections.append(connection)

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "black hole accept thread did not stop"
        for connection in self.connections:
            connection.close()
