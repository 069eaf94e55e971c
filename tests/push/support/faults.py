"""A proxy that injects faults between a client and a registry, and a blob store standing in for
S3 redirects."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import json
import socket
import threading
import urllib.parse

from tests.push.support.serving import serve_in_thread, stop_serving


@dataclasses.dataclass
class Fault:
    """Fails the first `times` requests whose method and path match.

    action: "500" or "429" (a response, not forwarded); "404" (the registry's not-found answer
    for the path: an unknown upload session, manifest or blob); "drop" (forward half of the
    request body to the registry, then cut both connections); "unmount" (forward a mount
    request without its mount, so the registry answers 202 with a new upload session, as
    registries that cannot mount do); "redirect" (307 to the proxy's `redirect_to` + path);
    "unauthorized" (forward without the Authorization header, so the registry answers 401 with
    its challenge, as it does once a token has expired).
    """

    method: str
    path_contains: str
    action: str
    times: int = 1
    hits: int = 0


class FaultProxy:
    """An HTTP proxy in front of a registry that injects failures and counts requests."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.redirect_to = ""
        self.requests: list[tuple[str, str]] = []
        self.injected: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                fault = proxy.match(self.command, self.path)
                if fault and fault.action in ("500", "429"):
                    self.rfile.read(length)
                    body = (
                        b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                    )
                    self.send_response(int(fault.action))
                    if fault.action == "429":
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if fault and fault.action in ("404", "redirect"):
                    self.rfile.read(length)
                    if fault.action == "404":
                        code = (
                            "BLOB_UPLOAD_UNKNOWN"
                            if "/uploads/" in self.path
                            else "MANIFEST_UNKNOWN"
                            if "/manifests/" in self.path
                            else "BLOB_UNKNOWN"
                        )
                        body = json.dumps(
                            {"errors": [{"code": code, "message": "injected"}]}
                        ).encode()
                        self.send_response(404)
                    else:
                        body = b""
                        self.send_response(307)
                        self.send_header("Location", proxy.redirect_to + self.path)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                path = self.path
                if fault and fault.action == "unmount":
                    split = urllib.parse.urlsplit(path)
                    query = [
                        (key, value)
                        for key, value in urllib.parse.parse_qsl(split.query)
                        if key not in ("mount", "from")
                    ]
                    path = urllib.parse.urlunsplit(
                        ("", "", split.path, urllib.parse.urlencode(query), "")
                    )
                upstream = http.client.HTTPConnection(
                    "127.0.0.1", proxy.upstream_port, timeout=60
                )
                upstream.putrequest(
                    self.command, path, skip_host=True, skip_accept_encoding=True
                )
                for key, value in self.headers.items():
                    if (
                        fault
                        and fault.action == "unauthorized"
                        and key.lower() == "authorization"
                    ):
                        continue
                    upstream.putheader(key, value)
                upstream.endheaders()
                if fault and fault.action == "drop":
                    upstream.send(self.rfile.read(length // 2))
                    upstream.sock.shutdown(socket.SHUT_RDWR)
                    upstream.close()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                remaining = length
                while remaining:
                    block = self.rfile.read(min(remaining, 1 << 20))
                    upstream.send(block)
                    remaining -= len(block)
                response = upstream.getresponse()
                body = response.read()
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in (
                        "transfer-encoding",
                        "connection",
                        "content-length",
                    ):
                        self.send_header(key, value)
                # A HEAD's Content-Length is the size of what a GET would return, not zero.
                length = (
                    response.getheader("Content-Length")
                    if self.command == "HEAD"
                    else None
                )
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one

            def log_message(self, *args):
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self._thread = serve_in_thread(self._http)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if (
                    fault.method == method
                    and fault.path_contains in path
                    and fault.hits < fault.times
                ):
                    fault.hits += 1
                    self.injected.append((method, path, fault.action))
                    return fault
        return None

    def close(self) -> None:
        stop_serving(self._http, self._thread)


class BlobStore:
    """Another host serving blobs by digest, as S3 does for ECR's redirected blob GETs; records
    the headers of each request it gets."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs
        self.requests: list[dict[str, str]] = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                store.requests.append(dict(self.headers.items()))
                digest = self.path.rsplit("/", 1)[-1]
                body = store.blobs.get(digest)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # "localhost", not 127.0.0.1: another host name than the registry's, as S3's is.
        self.url = f"http://localhost:{self._http.server_address[1]}"
        self._thread = serve_in_thread(self._http)

    def close(self) -> None:
        stop_serving(self._http, self._thread)
