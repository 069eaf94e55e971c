"""The tiers combined: verified reads from disk then S3 (one fetch per key), verified writes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import threading

from .action_result import (
    ActionResult,
    parse_action_result,
    referenced_blobs,
    tree_files,
)
from .disk_tier import DiskTier
from .errors import (
    CHUNK_SIZE,
    MAX_ACTION_RESULT_BYTES,
    BadRequest,
    S3Unavailable,
    TooLarge,
)
from .s3_tier import S3Store
from .uploader import Uploader

log = logging.getLogger("s3cache")


class KeyedLocks:
    """One lock per key, so that concurrent misses on the same blob fetch it from S3 once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextlib.contextmanager
    def hold(self, key: str):
        with self._lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]

    def waiting(self) -> int:
        """How many callers wait for another's hold on the same key (e.g. its S3 fetch)."""
        with self._lock:
            return sum(count - 1 for _, count in self._locks.values())


class BlobCache:
    def __init__(
        self, disk: DiskTier, s3: S3Store | None, uploader: Uploader | None, stats
    ):
        self.disk = disk
        self.s3 = s3
        self.uploader = uploader
        self.stats = stats
        self.fetching = KeyedLocks()
        self._head_requests = concurrent.futures.ThreadPoolExecutor(max_workers=16)

    def open(self, kind: str, digest: str):
        """A verified blob opened for reading, positioned at its start, or None on a miss."""
        blob, tier = self._open_verified(kind, digest)
        self.stats.add(f"{kind}_disk_{'hits' if tier == 'disk' else 'misses'}")
        if self.s3 is not None and tier != "disk":
            self.stats.add(f"{kind}_s3_{'hits' if tier == 's3' else 'misses'}")
        if blob is not None and kind == "ac" and not self._outputs_available(blob):
            blob.close()
            blob = None
        self.stats.add(f"{kind}_hits" if blob else f"{kind}_misses")
        return blob

    def _open_verified(self, kind: str, digest: str):
        """(blob, "disk" or "s3") for a verified blob, or (None, None)."""
        blob = self._open_from_disk(kind, digest)
        if blob is not None:
            return blob, "disk"
        if self.s3 is None:
            return None, None
        # Single flight: concurrent misses of one key wait for one S3 fetch, then read the disk.
        with self.fetching.hold(f"{kind}/{digest}"):
            blob = self._open_from_disk(kind, digest)
            if blob is not None:
                return blob, "disk"
            blob = self._fetch_from_s3(kind, digest)
            return (blob, "s3") if blob is not None else (None, None)

    def size(self, kind: str, digest: str) -> int | None:
        """The blob's size if the cache has it (not verified: HEAD must stay cheap)."""
        size = self.disk.size(kind, digest)
        if size is None and self.s3 is not None:
            with contextlib.suppress(S3Unavailable):
                size = self.s3.size(kind, digest)
        return size

    def put(self, kind: str, digest: str, body_chunks) -> int:
        """Stores the body if it is valid (else raises BadRequest); returns its size."""
        hasher = hashlib.sha256()
        size = 0
        temp = self.disk.new_temp_file()
        try:
            with temp:
                for chunk in body_chunks:
                    hasher.update(chunk)
                    temp.write(chunk)
                    size += len(chunk)
            if kind == "cas" and hasher.hexdigest() != digest:
                raise BadRequest(
                    f"body has sha256 {hasher.hexdigest()}, not its key {digest}: not stored"
                )
            if kind == "ac":
                if size > MAX_ACTION_RESULT_BYTES:
                    raise TooLarge(MAX_ACTION_RESULT_BYTES, "an action-cache entry")
                with open(temp.name, "rb") as stored:
                    parse_action_result(stored.read())
            if self.uploader is not None:
                self.uploader.submit(kind, digest, temp.name)
            self.disk.commit(kind, digest, temp.name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp.name)
        self.stats.add("puts")
        return size

    def _open_from_disk(self, kind: str, digest: str):
        blob = self.disk.open(kind, digest)
        if blob is None:
            return None
        problem = _integrity_problem(kind, digest, blob)
        if problem:
            blob.close()
            self.disk.remove(kind, digest)
            self.stats.add("integrity_deletes")
            log.warning("deleted %s/%s from disk: %s", kind, digest, problem)
            return None
        return blob

    def _fetch_from_s3(self, kind: str, digest: str):
        temp = self.disk.new_temp_file()
        hasher = hashlib.sha256()

        def write(chunk: bytes) -> None:
            hasher.update(chunk)
            temp.write(chunk)

        try:
            with temp:
                found = self.s3.fetch(kind, digest, write)
        except S3Unavailable:
            found = False
        try:
            if not found:
                return None
            blob = open(temp.name, "rb")  # noqa: SIM115 (returned to the caller, who closes it)
            if kind == "cas":  # hashed on the way in: no second pass over a large blob
                actual = hasher.hexdigest()
                problem = None if actual == digest else f"content hashes to {actual}"
            else:
                problem = _integrity_problem(kind, digest, blob)
            if problem:
                blob.close()
                self.stats.add("integrity_deletes")
                log.warning("deleting %s/%s from S3: %s", kind, digest, problem)
                with contextlib.suppress(S3Unavailable):
                    self.s3.delete(kind, digest)
                return None
            self.disk.commit(kind, digest, temp.name)
            self.stats.add("hits_from_s3")
            return blob
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp.name)

    def _outputs_available(self, blob) -> bool:
        """An action-cache hit is only useful if every blob it points to can be fetched.

        That includes each file listed by the Tree of each output directory: the trees are
        read (from disk, or fetched from S3 onto disk, where the client will want them next).
        """
        result = ActionResult()
        result.ParseFromString(blob.read())
        blob.seek(0)
        if not self._all_available(referenced_blobs(result)):
            return False
        files: set[str] = set()
        for output in result.output_directories:
            if output.tree_digest.size_bytes == 0:
                continue
            tree, _ = self._open_verified("cas", output.tree_digest.hash)
            if tree is None:
                return False
            with tree:
                try:
                    files.update(tree_files(tree.read()))
                except BadRequest as error:
                    log.warning(
                        "action-cache entry names tree %s for %r, which is unusable: %s",
                        output.tree_digest.hash,
                        output.path,
                        error,
                    )
                    return False
        return self._all_available(sorted(files))

    def _all_available(self, digests: list[str]) -> bool:
        not_on_disk = [
            digest for digest in digests if self.disk.size("cas", digest) is None
        ]
        if not not_on_disk:
            return True
        if self.s3 is None:
            return False

        def in_s3(digest: str) -> bool:
            try:
                return self.s3.size("cas", digest) is not None
            except S3Unavailable:
                return False

        # One HEAD request per blob: in parallel, since an action may have many outputs.
        return all(self._head_requests.map(in_s3, not_on_disk))


def _integrity_problem(kind: str, digest: str, blob) -> str | None:
    """Why the opened blob cannot be served under its key, or None; leaves it at offset 0."""
    try:
        if kind == "cas":
            hasher = hashlib.sha256()
            while chunk := blob.read(CHUNK_SIZE):
                hasher.update(chunk)
            if hasher.hexdigest() != digest:
                return f"content hashes to {hasher.hexdigest()}"
        else:
            data = blob.read(MAX_ACTION_RESULT_BYTES + 1)
            if len(data) > MAX_ACTION_RESULT_BYTES:
                return "larger than any ActionResult the cache accepts"
            try:
                parse_action_result(data)
            except BadRequest as error:
                return str(error)
        return None
    finally:
        blob.seek(0)
