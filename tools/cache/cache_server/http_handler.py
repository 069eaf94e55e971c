"""Bazel's HTTP remote cache protocol (GET/HEAD/PUT /ac/<sha256>, /cas/<sha256>) and /status."""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import time
from urllib.parse import urlsplit

from .blob_cache import BlobCache
from .errors import (
    CHUNK_SIZE,
    MAX_ACTION_RESULT_BYTES,
    SERVICE_NAME,
    BadRequest,
    TooLarge,
)
from .stats import Stats

log = logging.getLogger("s3cache")
# Bazel appends /ac/<hash> or /cas/<hash> to the path of --remote_cache, so accept any prefix.
BLOB_PATH = re.compile(r"^(?:/.*)?/(ac|cas)/([0-9a-f]{64})$")
# A chunk size is hex digits only: int(x, 16) alone would also take "-1", "+1", " 1" or "0x1".
CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\r?\n")
MAX_CHUNK_LINE = 1024
MAX_TRAILER_LINES = 64


class CacheRequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Bazel reuses a pool of connections
    server_version = "bazel-s3-cache/1"
    timeout = 900  # idle keep-alive connections are closed after this

    @property
    def cache(self) -> BlobCache:
        return self.server.cache

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/status":
            body = (
                json.dumps(self.server.status(), indent=2, sort_keys=True).encode()
                + b"\n"
            )
            return self._respond(
                200, body if send_body else b"", "application/json", len(body)
            )
        match = BLOB_PATH.match(path)
        if not match:
            return self._respond(
                404, b"not a cache path: use /ac/<sha256> or /cas/<sha256>\n"
            )
        kind, digest = match.groups()
        if not send_body:
            size = self.cache.size(kind, digest)
            return (
                self._respond(404) if size is None else self._respond(200, length=size)
            )
        blob = self.cache.open(kind, digest)
        if blob is None:
            return self._respond(404)
        with blob:
            size = os.fstat(blob.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                sent = self.connection.sendfile(blob, 0, size) if size else 0
            except OSError as error:  # the client went away; nothing to repair
                log.debug("sending %s/%s stopped: %s", kind, digest, error)
                self.close_connection = True
                return
            self.server.stats.add("bytes_out", sent)

    def do_PUT(self):
        match = BLOB_PATH.match(urlsplit(self.path).path)
        if not match:
            self.close_connection = True
            return self._respond(400, b"PUT only to /ac/<sha256> or /cas/<sha256>\n")
        kind, digest = match.groups()
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = self.headers.get("Content-Length")
        if not chunked and length is None:
            self.close_connection = True
            return self._respond(
                411, b"PUT needs a Content-Length or chunked encoding\n"
            )
        if not chunked and not length.isdigit():
            self.close_connection = True
            return self._respond(
                400,
                f"invalid Content-Length {length[:40]!r}: expected digits\n".encode(),
            )
        limit = self._size_limit(kind)
        if not chunked and int(length) > limit.bytes:
            self.close_connection = True  # the body is left unread
            self.server.stats.add("rejected_puts")
            return self._respond(413, f"{limit}\n".encode())
        body = self._chunked_body() if chunked else self._sized_body(int(length))
        try:
            size = self.cache.put(kind, digest, _at_most(body, limit))
        except BadRequest as error:
            self.server.stats.add("rejected_puts")
            log.warning("rejected PUT /%s/%s: %s", kind, digest, error)
            too_large = isinstance(error, TooLarge)
            # A sized body was read to its end (unless too large); a chunked one may not be.
            self.close_connection = chunked or too_large
            status = 413 if too_large else 400
            return self._respond(status, f"{error}\n".encode())
        except (ConnectionError, TimeoutError, EOFError) as error:
            log.info("PUT /%s/%s abandoned by the client: %s", kind, digest, error)
            self.close_connection = True
            return None
        except OSError as error:
            # A full disk, say: the build goes on without this entry.
            log.error("cannot store %s/%s: %s", kind, digest, error)
            self.close_connection = True  # the rest of the body is unread
            return self._respond(500, f"cannot store: {error}\n".encode())
        self.server.stats.add("bytes_in", size)
        self._respond(200)

    def _size_limit(self, kind: str) -> TooLarge:
        if kind == "ac":
            return TooLarge(MAX_ACTION_RESULT_BYTES, "an action-cache entry")
        # A larger blob would evict the whole disk tier and then itself.
        return TooLarge(
            self.cache.disk.limit_bytes, "a CAS blob (the disk tier's limit)"
        )

    def _sized_body(self, length: int):
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise EOFError(f"body ended {remaining} bytes early")
            remaining -= len(chunk)
            yield chunk

    def _chunked_body(self):
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE)
            if not line:
                raise EOFError("chunked body ended early")
            match = CHUNK_SIZE_LINE.fullmatch(line)
            if not match:
                raise BadRequest(
                    f"malformed chunk size line {line[:40]!r}: expected 1 to 16 hex digits, "
                    "optional ;extensions, then CRLF"
                )
            size = int(match.group(1), 16)
            if size == 0:
                return self._skip_trailers()
            yield from self._sized_body(size)
            end = self.rfile.readline(3)
            if not end:
                raise EOFError("chunked body ended early")
            if end not in (b"\r\n", b"\n"):
                raise BadRequest(f"chunk data not followed by CRLF but {end!r}")

    def _skip_trailers(self) -> None:
        for _ in range(MAX_TRAILER_LINES):
            line = self.rfile.readline(MAX_CHUNK_LINE)
            if line in (b"\r\n", b"\n", b""):
                return
            if not line.endswith(b"\n"):
                raise BadRequest(f"malformed trailer line {line[:40]!r}")
        raise BadRequest(f"more than {MAX_TRAILER_LINES} trailer lines")

    def _respond(
        self, status: int, body: bytes = b"", content_type="text/plain", length=None
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(body)


def _at_most(chunks, limit: TooLarge):
    """The body's chunks; raises `limit` once they add up to more than it allows."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit.bytes:
            raise limit
        yield chunk


class CacheHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, address, cache, stats: Stats, describe_s3: dict, instance_id: str
    ):
        super().__init__(address, CacheRequestHandler)
        self.instance_id = instance_id
        self.cache = cache
        self.stats = stats
        self._describe_s3 = describe_s3
        self._started = time.monotonic()

    def status(self) -> dict:
        s3 = dict(self._describe_s3)
        if self.cache.s3 is not None:
            s3["circuit"] = self.cache.s3.breaker.state
            s3["requests_waiting_for_a_shared_fetch"] = self.cache.fetching.waiting()
        uploads = self.cache.uploader.status() if self.cache.uploader else None
        return {
            "service": SERVICE_NAME,
            "instance_id": self.instance_id,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "totals": self.stats.snapshot(),
            "last_minute": self.stats.last_minute,
            "hit_rates": self.stats.hit_rates(),
            "disk": self.cache.disk.status(),
            "s3": s3,
            "uploads": uploads,
        }
