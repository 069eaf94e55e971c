"""Constants and exceptions shared by every part of the cache server."""

from __future__ import annotations

import re

SERVICE_NAME = "bazel-s3-cache"
KINDS = ("ac", "cas")
CHUNK_SIZE = 1 << 20
MAX_ACTION_RESULT_BYTES = 16 << 20
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class BadRequest(Exception):
    """The client sent something the cache refuses to store; the message says why."""


class TooLarge(BadRequest):
    """A body larger than the cache stores for its kind (HTTP 413)."""

    def __init__(self, limit_bytes: int, what: str):
        super().__init__(f"{what} is at most {limit_bytes} bytes: not stored")
        self.bytes = limit_bytes


class S3Unavailable(Exception):
    """S3 could not answer (error, timeout or open circuit): callers treat it as a miss."""

    def __init__(self, message: str, circuit_open: bool = False):
        super().__init__(message)
        self.circuit_open = circuit_open
