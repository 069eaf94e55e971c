"""HTTP details: retryable statuses and errors, Retry-After, registry error bodies,
streamed request bodies, responses, proxies."""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import ssl
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tools.registry.client.errors import RegistryError
from tools.registry.client.names import LOOPBACK_HOSTS

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Dropped or reset connections and timeouts; DNS and certificate failures are not transient.
TRANSIENT_ERRORS = (
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes, retry_after: float | None):
        super().__init__(status)
        self.status, self.body, self.retry_after = status, body, retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(
            0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        )
    except (TypeError, ValueError):
        return None


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return (
            "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                for e in errors
            )
            or body[:200].decode()
        )
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


def _error_codes(body: bytes) -> set[str]:
    try:
        return {e.get("code", "") for e in json.loads(body).get("errors") or []}
    except (ValueError, AttributeError):
        return set()


# --------------------------------------------------------------------------- request bodies


class _FileSlice:
    """Streams `length` bytes of a file from `offset` without loading it into memory."""

    def __init__(self, path: Path, offset: int, length: int):
        # Closed by close(): http.client reads it lazily while sending.
        self._file = open(path, "rb")  # noqa: SIM115
        self._file.seek(offset)
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        size = (
            self._remaining if size is None or size < 0 else min(size, self._remaining)
        )
        data = self._file.read(size)
        if not data:
            raise RegistryError(
                f"{self._file.name} is shorter than its descriptor says; rebuild the image"
            )
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _proxy_for(scheme: str, netloc: str) -> str | None:
    host = netloc.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_HOSTS or urllib.request.proxy_bypass(host):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy:
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy).netloc
