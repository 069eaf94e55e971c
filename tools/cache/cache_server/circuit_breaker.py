"""Skips S3 after repeated failures, so that a slow or broken bucket never slows a build."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("s3cache")


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` lets one probe through."""

    def __init__(self, threshold: int, cooldown: float):
        self.threshold = threshold
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    def allow(self) -> bool:
        with self._lock:
            if self._failures < self.threshold:
                return True
            if time.monotonic() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            if self._failures >= self.threshold:
                log.info("S3 answers again: circuit closed")
            self._failures = 0
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= self.threshold:
                if self._open_until <= time.monotonic():
                    log.warning(
                        "S3 failed %d times in a row: circuit open, S3 skipped for %.0fs",
                        self._failures,
                        self.cooldown,
                    )
                self._open_until = time.monotonic() + self.cooldown

    @property
    def state(self) -> str:
        with self._lock:
            if self._failures < self.threshold:
                return "closed"
            return "open" if time.monotonic() < self._open_until else "half-open"
