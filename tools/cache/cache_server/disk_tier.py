"""The bounded local disk tier: verified files, evicted least recently used first."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict

from .errors import KINDS, SHA256_HEX
from .stats import human_bytes

log = logging.getLogger("s3cache")


class DiskTier:
    """Files under <root>/{ac,cas}/<xx>/<hash>, evicted least recently used first.

    Writes go to <root>/tmp and are renamed into place, so readers never see partial files.
    The mtime of a blob records its last access, which keeps the LRU order across restarts.
    """

    def __init__(self, root: str, limit_bytes: int):
        self.root = root
        self.limit_bytes = limit_bytes
        self.temp_dir = os.path.join(root, "tmp")
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._bytes = 0
        os.makedirs(self.temp_dir, exist_ok=True)
        for name in os.listdir(self.temp_dir):
            os.unlink(os.path.join(self.temp_dir, name))
        for kind in KINDS:
            for shard in range(256):
                os.makedirs(os.path.join(root, kind, f"{shard:02x}"), exist_ok=True)
        self._load_index()

    def _load_index(self) -> None:
        found = []
        for kind in KINDS:
            for shard in range(256):
                with os.scandir(
                    os.path.join(self.root, kind, f"{shard:02x}")
                ) as entries:
                    for entry in entries:
                        if SHA256_HEX.match(entry.name):
                            stat = entry.stat()
                            found.append(
                                (stat.st_mtime, kind, entry.name, stat.st_size)
                            )
        with self._lock:
            for _, kind, digest, size in sorted(found):
                self._entries[(kind, digest)] = size
                self._bytes += size
            self._evict_locked()
        log.info(
            "disk tier %s: %d entries, %s",
            self.root,
            len(found),
            human_bytes(self._bytes),
        )

    def path(self, kind: str, digest: str) -> str:
        return os.path.join(self.root, kind, digest[:2], digest)

    def new_temp_file(self):
        return tempfile.NamedTemporaryFile(dir=self.temp_dir, delete=False)

    def open(self, kind: str, digest: str):
        """The blob opened for reading (marked as just used), or None."""
        with self._lock:
            if (kind, digest) not in self._entries:
                return None
            self._entries.move_to_end((kind, digest))
            try:
                blob = open(self.path(kind, digest), "rb")  # noqa: SIM115 (the caller closes it)
            except FileNotFoundError:
                self._bytes -= self._entries.pop((kind, digest))
                return None
        with contextlib.suppress(OSError):
            os.utime(blob.fileno())
        return blob

    def size(self, kind: str, digest: str) -> int | None:
        with self._lock:
            return self._entries.get((kind, digest))

    def commit(self, kind: str, digest: str, temp_path: str) -> None:
        """Atomically moves a complete temp file into place, then evicts down to the limit."""
        size = os.path.getsize(temp_path)
        with self._lock:
            os.replace(temp_path, self.path(kind, digest))
            self._bytes += size - self._entries.pop((kind, digest), 0)
            self._entries[(kind, digest)] = size
            self._evict_locked()

    def remove(self, kind: str, digest: str) -> None:
        with self._lock:
            size = self._entries.pop((kind, digest), None)
            if size is not None:
                self._bytes -= size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(kind, digest))

    def _evict_locked(self) -> None:
        # Open readers keep their file descriptors, so unlinking under them is safe.
        while self._bytes > self.limit_bytes and self._entries:
            (kind, digest), size = self._entries.popitem(last=False)
            self._bytes -= size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(kind, digest))

    def status(self) -> dict:
        with self._lock:
            return {
                "path": self.root,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "limit_bytes": self.limit_bytes,
            }
