"""Keeping the per-collection compaction lock (in DynamoDB) alive while a compaction runs."""

from __future__ import annotations

import threading
from typing import Self

from receipt_dynamo import ReceiptDynamoClient

from receipt_label.logs import get_logger

logger = get_logger("receipt_label.compaction")


class LockLost(RuntimeError):
    """Another compactor took the lock over (ours expired); this run must not move the pointer."""


class Heartbeat:
    """Refreshes the lock every third of its TTL; `lost` is set once a refresh finds it taken."""

    def __init__(
        self, dynamo: ReceiptDynamoClient, collection: str, owner: str, ttl: float
    ):
        self._dynamo, self._collection, self._owner, self._ttl = (
            dynamo,
            collection,
            owner,
            ttl,
        )
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lock-heartbeat-{collection}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                if not self._dynamo.refresh_lock(
                    self._collection, self._owner, self._ttl
                ):
                    self.lost.set()
                    return
            except Exception:  # A transient error must not kill the heartbeat; the fencing check decides.
                logger.warning("lock heartbeat failed", exc_info=True)

    def still_held(self) -> bool:
        """The fencing check: refreshing now keeps others out for a full TTL."""
        return not self.lost.is_set() and self._dynamo.refresh_lock(
            self._collection, self._owner, self._ttl
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
