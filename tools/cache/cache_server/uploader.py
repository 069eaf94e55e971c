"""Copies committed blobs to S3 in the background: a bounded queue, retries, and restarts."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
import uuid

from .errors import CHUNK_SIZE, S3Unavailable
from .s3_tier import S3Store
from .stats import Stats

log = logging.getLogger("s3cache")


class Uploader:
    """Copies committed blobs to S3 in the background: bounded queue, retries, survives restarts.

    A queued blob is hard-linked into <root>/pending so that disk-tier eviction cannot take it
    away; a worker moves it to <root>/uploading while it works on it. Links left over from a
    previous run are queued again at start.
    """

    def __init__(self, root: str, s3: S3Store, stats: Stats, args):
        self._s3 = s3
        self._stats = stats
        self._max_attempts = args.upload_attempts
        self._pending_dir = os.path.join(root, "pending")
        self._uploading_dir = os.path.join(root, "uploading")
        self._queue: queue.Queue[str] = queue.Queue(maxsize=args.upload_queue_size)
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._in_flight = 0
        os.makedirs(self._pending_dir, exist_ok=True)
        os.makedirs(self._uploading_dir, exist_ok=True)
        for name in os.listdir(self._uploading_dir):
            original = os.path.join(self._pending_dir, name.split(".")[0])
            leftover = os.path.join(self._uploading_dir, name)
            if os.path.exists(original):
                os.unlink(leftover)
            else:
                os.replace(leftover, original)
        for name in sorted(os.listdir(self._pending_dir)):
            if re.fullmatch(r"(ac|cas)-[0-9a-f]{64}", name):
                self._enqueue_locked(name)
            else:
                os.unlink(os.path.join(self._pending_dir, name))
        for _ in range(args.upload_workers):
            threading.Thread(target=self._work_forever, daemon=True).start()

    def submit(self, kind: str, digest: str, source_path: str) -> None:
        """Queues a copy of source_path (a complete, verified file) for upload."""
        name = f"{kind}-{digest}"
        staged = os.path.join(self._pending_dir, name)
        with self._lock:
            fresh_link = f"{staged}.{uuid.uuid4().hex}"
            os.link(source_path, fresh_link)
            os.replace(fresh_link, staged)
            if name not in self._queued:
                self._enqueue_locked(name)

    def _enqueue_locked(self, name: str) -> None:
        try:
            self._queue.put_nowait(name)
        except queue.Full:
            os.unlink(os.path.join(self._pending_dir, name))
            self._stats.add("uploads_dropped")
            log.warning("upload queue full: %s stays local only", name)
            return
        self._queued.add(name)

    def _work_forever(self) -> None:
        while True:
            name = self._queue.get()
            with self._lock:
                self._queued.discard(name)
                working = os.path.join(
                    self._uploading_dir, f"{name}.{uuid.uuid4().hex}"
                )
                try:
                    os.rename(os.path.join(self._pending_dir, name), working)
                except FileNotFoundError:
                    continue
                self._in_flight += 1
            try:
                self._upload_with_retries(name, working)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(working)
                with self._lock:
                    self._in_flight -= 1

    def _upload_with_retries(self, name: str, path: str) -> None:
        kind, digest = name.split("-")
        size = os.path.getsize(path)
        attempts, delay = 0, 0.5
        while True:
            s3_was_healthy = self._s3.breaker.state == "closed"
            try:
                # CAS keys name their content: big blobs another client stored are not re-sent.
                if not (
                    kind == "cas"
                    and size > CHUNK_SIZE
                    and self._s3.size(kind, digest) == size
                ):
                    self._s3.upload(kind, digest, path)
                self._stats.add("uploads_done")
                return
            except S3Unavailable:
                # While S3 is down the item waits (the queue is bounded); only failures while S3
                # otherwise works use up attempts.
                attempts += s3_was_healthy
                if attempts >= self._max_attempts:
                    self._stats.add("uploads_failed")
                    log.warning(
                        "giving up uploading %s after %d attempts", name, attempts
                    )
                    return
                time.sleep(delay if s3_was_healthy else 0.5)
                delay = min(delay * 2, 30)

    def status(self) -> dict:
        with self._lock:
            return {"queued": len(self._queued), "in_flight": self._in_flight}

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status["queued"] == 0 and status["in_flight"] == 0:
                return True
            time.sleep(0.1)
        return False
