"""Bazel HTTP remote cache (GET/HEAD/PUT /ac/<sha256> and /cas/<sha256>) backed by S3.

A bounded local disk tier (LRU by last access) sits in front of the bucket. Every object is
checked on the way in and on the way out: CAS blobs must hash to their key and action-cache
entries must parse as build.bazel.remote.execution.v2.ActionResult messages. S3 is never on the
critical path of a build: reads fall back to a miss when S3 is slow or down (short timeouts and a
circuit breaker), and writes land on disk first and reach S3 through a bounded background queue
with retries.

Self-contained (standard library + boto3 + protobuf) so that it runs as a plain script:
    python3 tools/cache/server.py --cache-dir DIR --bucket BUCKET [--endpoint-url URL] ...
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import http.server
import json
import logging
import os
import queue
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from urllib.parse import urlsplit

log = logging.getLogger("s3cache")

SERVICE_NAME = "bazel-s3-cache"
KINDS = ("ac", "cas")
CHUNK_SIZE = 1 << 20
MAX_ACTION_RESULT_BYTES = 16 << 20
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Bazel appends /ac/<hash> or /cas/<hash> to the path of --remote_cache, so accept any prefix.
BLOB_PATH = re.compile(r"^(?:/.*)?/(ac|cas)/([0-9a-f]{64})$")


class BadRequest(Exception):
    """The client sent something the cache refuses to store; the message says why."""


class S3Unavailable(Exception):
    """S3 could not answer (error, timeout or open circuit): callers treat it as a miss."""

    def __init__(self, message: str, circuit_open: bool = False):
        super().__init__(message)
        self.circuit_open = circuit_open


# --------------------------------------------------------------------------- ActionResult schema


def _build_action_result_class():
    """Builds the ActionResult message class from a descriptor defined here (no protoc needed).

    Field numbers and types follow build/bazel/remote/execution/v2/remote_execution.proto; the
    google.protobuf well-known types it uses are replaced by local messages with the same wire
    format, so no descriptor dependencies are needed.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field_type = descriptor_pb2.FieldDescriptorProto
    scalar_types = {
        "string": field_type.TYPE_STRING,
        "bytes": field_type.TYPE_BYTES,
        "int64": field_type.TYPE_INT64,
        "int32": field_type.TYPE_INT32,
        "uint32": field_type.TYPE_UINT32,
        "bool": field_type.TYPE_BOOL,
    }
    package = "build.bazel.remote.execution.v2"
    schema = {
        "Digest": [("hash", 1, "string"), ("size_bytes", 2, "int64")],
        "Timestamp": [("seconds", 1, "int64"), ("nanos", 2, "int32")],
        "UInt32Value": [("value", 1, "uint32")],
        "Any": [("type_url", 1, "string"), ("value", 2, "bytes")],
        "NodeProperty": [("name", 1, "string"), ("value", 2, "string")],
        "NodeProperties": [
            ("properties", 1, "repeated NodeProperty"),
            ("mtime", 2, "Timestamp"),
            ("unix_mode", 3, "UInt32Value"),
        ],
        "OutputFile": [
            ("path", 1, "string"),
            ("digest", 2, "Digest"),
            ("is_executable", 4, "bool"),
            ("contents", 5, "bytes"),
            ("node_properties", 7, "NodeProperties"),
        ],
        "OutputSymlink": [
            ("path", 1, "string"),
            ("target", 2, "string"),
            ("node_properties", 4, "NodeProperties"),
        ],
        "OutputDirectory": [
            ("path", 1, "string"),
            ("tree_digest", 3, "Digest"),
            ("is_topologically_sorted", 4, "bool"),
            ("root_directory_digest", 5, "Digest"),
        ],
        "ExecutedActionMetadata": [
            ("worker", 1, "string"),
            *[
                (name + "_timestamp", number, "Timestamp")
                for number, name in enumerate(
                    [
                        "queued",
                        "worker_start",
                        "worker_completed",
                        "input_fetch_start",
                        "input_fetch_completed",
                        "execution_start",
                        "execution_completed",
                        "output_upload_start",
                        "output_upload_completed",
                    ],
                    start=2,
                )
            ],
            ("auxiliary_metadata", 11, "repeated Any"),
            ("virtual_execution_duration", 12, "Timestamp"),
        ],
        "ActionResult": [
            ("output_files", 2, "repeated OutputFile"),
            ("output_directories", 3, "repeated OutputDirectory"),
            ("exit_code", 4, "int32"),
            ("stdout_raw", 5, "bytes"),
            ("stdout_digest", 6, "Digest"),
            ("stderr_raw", 7, "bytes"),
            ("stderr_digest", 8, "Digest"),
            ("execution_metadata", 9, "ExecutedActionMetadata"),
            ("output_file_symlinks", 10, "repeated OutputSymlink"),
            ("output_directory_symlinks", 11, "repeated OutputSymlink"),
            ("output_symlinks", 12, "repeated OutputSymlink"),
        ],
    }
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tools/cache/remote_execution_subset.proto",
        package=package,
        syntax="proto3",
    )
    for message_name, fields in schema.items():
        message = file_proto.message_type.add(name=message_name)
        for field_name, number, type_spec in fields:
            repeated, _, type_name = type_spec.rpartition(" ")
            field = message.field.add(name=field_name, number=number)
            field.label = (
                field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL
            )
            if type_name in scalar_types:
                field.type = scalar_types[type_name]
            else:
                field.type = field_type.TYPE_MESSAGE
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName(f"{package}.ActionResult")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(
        descriptor
    )  # protobuf < 4.22


ActionResult = _build_action_result_class()


def parse_action_result(data: bytes):
    """Returns the ActionResult in `data`, or raises BadRequest naming what is wrong with it."""
    from google.protobuf.message import DecodeError

    if not data:
        raise BadRequest("empty action-cache entry: expected a serialized ActionResult")
    result = ActionResult()
    try:
        result.ParseFromString(data)
    except DecodeError as error:
        raise BadRequest(
            f"action-cache entry is not a protobuf ActionResult: {error}"
        ) from None
    # Protobuf keeps fields it does not know as "unknown fields", so arbitrary bytes often parse.
    # Outside execution_metadata (which newer clients may extend) every field must be known.
    probe = ActionResult()
    probe.CopyFrom(result)
    probe.ClearField("execution_metadata")
    size_with_unknown = len(probe.SerializeToString())
    probe.DiscardUnknownFields()
    # Serialized lengths, not ByteSize(): the pure-Python protobuf caches ByteSize() stale here.
    if len(probe.SerializeToString()) != size_with_unknown:
        raise BadRequest("action-cache entry has fields an ActionResult does not have")
    for output in result.output_files:
        _check_output_path(output.path, allow_empty=False)
        _check_digest(output.digest, f"output file {output.path!r}")
    for output in result.output_directories:
        _check_output_path(output.path, allow_empty=True)
        _check_digest(output.tree_digest, f"output directory {output.path!r}")
    for symlinks in (
        result.output_symlinks,
        result.output_file_symlinks,
        result.output_directory_symlinks,
    ):
        for symlink in symlinks:
            _check_output_path(symlink.path, allow_empty=False)
    for name in ("stdout_digest", "stderr_digest"):
        if result.HasField(name):
            _check_digest(getattr(result, name), name)
    return result


def referenced_blobs(result) -> list[str]:
    """CAS keys a client needs to use `result` (empty blobs are never stored: clients skip them)."""
    digests = [output.digest for output in result.output_files]
    digests += [output.tree_digest for output in result.output_directories]
    digests += [result.stdout_digest, result.stderr_digest]
    return sorted({digest.hash for digest in digests if digest.size_bytes > 0})


def _check_output_path(path: str, allow_empty: bool) -> None:
    if (not path and not allow_empty) or path.startswith("/"):
        raise BadRequest(
            f"ActionResult has an invalid output path {path!r}: must be relative"
        )


def _check_digest(digest, what: str) -> None:
    if not SHA256_HEX.match(digest.hash) or digest.size_bytes < 0:
        raise BadRequest(
            f"ActionResult {what} has digest {digest.hash!r}/{digest.size_bytes}: "
            "expected a lowercase sha256 hex hash and a size >= 0"
        )


# --------------------------------------------------------------------------- counters


class Stats:
    """Thread-safe counters; the reporter thread turns them into per-minute log lines."""

    NAMES = (
        "ac_hits",
        "ac_misses",
        "cas_hits",
        "cas_misses",
        "hits_from_s3",
        "puts",
        "rejected_puts",
        "bytes_in",
        "bytes_out",
        "s3_bytes_down",
        "s3_bytes_up",
        "s3_errors",
        "integrity_deletes",
        "uploads_done",
        "uploads_failed",
        "uploads_dropped",
    )

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)
        self.last_minute = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def report_forever(self, interval: float) -> None:
        previous = self.snapshot()
        while True:
            time.sleep(interval)
            current = self.snapshot()
            delta = {name: current[name] - previous[name] for name in self.NAMES}
            self.last_minute, previous = delta, current
            if any(delta.values()):
                log.info(
                    "last %ds: hits %d (ac %d, cas %d, from s3 %d), misses %d (ac %d, cas %d), "
                    "in %s, out %s, s3 down %s, up %s, s3 errors %d, uploads %d done/%d failed/%d "
                    "dropped, rejected puts %d, integrity deletes %d",
                    interval,
                    delta["ac_hits"] + delta["cas_hits"],
                    delta["ac_hits"],
                    delta["cas_hits"],
                    delta["hits_from_s3"],
                    delta["ac_misses"] + delta["cas_misses"],
                    delta["ac_misses"],
                    delta["cas_misses"],
                    _human_bytes(delta["bytes_in"]),
                    _human_bytes(delta["bytes_out"]),
                    _human_bytes(delta["s3_bytes_down"]),
                    _human_bytes(delta["s3_bytes_up"]),
                    delta["s3_errors"],
                    delta["uploads_done"],
                    delta["uploads_failed"],
                    delta["uploads_dropped"],
                    delta["rejected_puts"],
                    delta["integrity_deletes"],
                )


def _human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """'10G', '512M', '64K' or a byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or e.g. 512M, 10G"
        )
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")


# --------------------------------------------------------------------------- disk tier


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
            _human_bytes(self._bytes),
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


# --------------------------------------------------------------------------- S3 tier


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


class S3Store:
    """The bucket: <prefix>/ac/<hash> and <prefix>/cas/<hash>. Errors become S3Unavailable."""

    def __init__(self, args, breaker: CircuitBreaker, stats: Stats):
        import boto3
        import botocore.config
        from boto3.s3.transfer import TransferConfig

        self.bucket = args.bucket
        self.prefix = args.prefix.strip("/")
        self.breaker = breaker
        self._stats = stats
        config = botocore.config.Config(
            connect_timeout=args.s3_connect_timeout,
            read_timeout=args.s3_read_timeout,
            retries={
                "total_max_attempts": 1
            },  # the uploader retries; reads must fail fast
            max_pool_connections=64,
            s3={"addressing_style": "path"} if args.endpoint_url else None,
        )
        self._client = boto3.session.Session().client(
            "s3",
            region_name=args.region or None,
            endpoint_url=args.endpoint_url or None,
            config=config,
        )
        # Parts are read from the file on demand, so memory stays near concurrency * part size.
        self._transfer_config = TransferConfig(
            multipart_threshold=64 << 20,
            multipart_chunksize=16 << 20,
            max_concurrency=2,
        )

    def key(self, kind: str, digest: str) -> str:
        return f"{self.prefix}/{kind}/{digest}" if self.prefix else f"{kind}/{digest}"

    def _call(self, what: str, action):
        if not self.breaker.allow():
            raise S3Unavailable("circuit open", circuit_open=True)
        try:
            result = action()
        except Exception as error:  # noqa: BLE001 (whatever S3 does, the build goes on)
            if _is_not_found(error):
                self.breaker.record_success()
                return None
            self.breaker.record_failure()
            self._stats.add("s3_errors")
            # botocore messages name the bucket and key but never the credentials.
            log.warning("S3 %s failed: %s: %s", what, type(error).__name__, error)
            raise S3Unavailable(f"{what}: {error}") from None
        self.breaker.record_success()
        return result

    def fetch(self, kind: str, digest: str, sink) -> bool:
        """Streams the object into sink(chunk); False when there is no such object."""

        def download():
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.key(kind, digest)
            )
            with contextlib.closing(response["Body"]) as body:
                for chunk in body.iter_chunks(CHUNK_SIZE):
                    sink(chunk)
                    self._stats.add("s3_bytes_down", len(chunk))
            return True

        return bool(self._call(f"GET {self.key(kind, digest)}", download))

    def size(self, kind: str, digest: str) -> int | None:
        """The object's size, or None when there is no such object."""
        key = self.key(kind, digest)
        response = self._call(
            f"HEAD {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=key)
        )
        return None if response is None else int(response["ContentLength"])

    def upload(self, kind: str, digest: str, path: str) -> None:
        key = self.key(kind, digest)
        self._call(
            f"PUT {key}",
            lambda: self._client.upload_file(
                path, self.bucket, key, Config=self._transfer_config
            ),
        )
        self._stats.add("s3_bytes_up", os.path.getsize(path))

    def delete(self, kind: str, digest: str) -> None:
        key = self.key(kind, digest)
        self._call(
            f"DELETE {key}",
            lambda: self._client.delete_object(Bucket=self.bucket, Key=key),
        )


def _is_not_found(error: Exception) -> bool:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


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


# --------------------------------------------------------------------------- the cache


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


class BlobCache:
    def __init__(
        self, disk: DiskTier, s3: S3Store | None, uploader: Uploader | None, stats
    ):
        self.disk = disk
        self.s3 = s3
        self.uploader = uploader
        self.stats = stats
        self._fetching = KeyedLocks()
        self._head_requests = concurrent.futures.ThreadPoolExecutor(max_workers=16)

    def open(self, kind: str, digest: str):
        """A verified blob opened for reading, positioned at its start, or None on a miss."""
        blob = self._open_from_disk(kind, digest)
        if blob is None and self.s3 is not None:
            with self._fetching.hold(f"{kind}/{digest}"):
                blob = self._open_from_disk(kind, digest) or self._fetch_from_s3(
                    kind, digest
                )
        if blob is not None and kind == "ac" and not self._outputs_available(blob):
            blob.close()
            blob = None
        self.stats.add(f"{kind}_hits" if blob else f"{kind}_misses")
        return blob

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
                    raise BadRequest("an action-cache entry is at most 16 MiB")
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
        """An action-cache hit is only useful if every blob it points to can be fetched."""
        result = ActionResult()
        result.ParseFromString(blob.read())
        blob.seek(0)
        not_on_disk = [
            digest
            for digest in referenced_blobs(result)
            if self.disk.size("cas", digest) is None
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


# --------------------------------------------------------------------------- HTTP


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
        if not chunked and (length is None or not length.isdigit()):
            self.close_connection = True
            return self._respond(
                411, b"PUT needs a Content-Length or chunked encoding\n"
            )
        if kind == "ac" and not chunked and int(length) > MAX_ACTION_RESULT_BYTES:
            self.close_connection = True
            self.server.stats.add("rejected_puts")
            return self._respond(413, b"an action-cache entry is at most 16 MiB\n")
        body = self._chunked_body() if chunked else self._sized_body(int(length))
        try:
            size = self.cache.put(kind, digest, body)
        except BadRequest as error:
            self.server.stats.add("rejected_puts")
            log.warning("rejected PUT /%s/%s: %s", kind, digest, error)
            self.close_connection = (
                chunked  # a malformed chunked body may be left unread
            )
            return self._respond(400, f"{error}\n".encode())
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
            line = self.rfile.readline(1024)
            if not line:
                raise EOFError("chunked body ended early")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest(f"malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from self._sized_body(size)
            self.rfile.readline(3)

    def _respond(
        self, status: int, body: bytes = b"", content_type="text/plain", length=None
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(body)


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
        uploads = self.cache.uploader.status() if self.cache.uploader else None
        return {
            "service": SERVICE_NAME,
            "instance_id": self.instance_id,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "totals": self.stats.snapshot(),
            "last_minute": self.stats.last_minute,
            "disk": self.cache.disk.status(),
            "s3": s3,
            "uploads": uploads,
        }


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir", required=True, help="disk tier and upload staging"
    )
    parser.add_argument(
        "--disk-limit", type=parse_size, default=env("BAZEL_CACHE_DISK_LIMIT", "10G")
    )
    parser.add_argument(
        "--bucket", default=env("BAZEL_CACHE_S3_BUCKET", ""), help="empty: disk only"
    )
    parser.add_argument("--prefix", default=env("BAZEL_CACHE_S3_PREFIX", "bazel-cache"))
    parser.add_argument("--region", default=env("BAZEL_CACHE_S3_REGION", ""))
    parser.add_argument(
        "--endpoint-url", default=env("BAZEL_CACHE_S3_ENDPOINT_URL", "")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--port-file", help="written (atomically) once the server listens"
    )
    parser.add_argument("--s3-connect-timeout", type=float, default=2.0)
    parser.add_argument("--s3-read-timeout", type=float, default=10.0)
    parser.add_argument("--breaker-threshold", type=int, default=3)
    parser.add_argument("--breaker-cooldown", type=float, default=30.0)
    parser.add_argument("--upload-workers", type=int, default=4)
    parser.add_argument("--upload-queue-size", type=int, default=10000)
    parser.add_argument("--upload-attempts", type=int, default=5)
    parser.add_argument("--stats-interval", type=float, default=60.0)
    parser.add_argument(
        "--drain-timeout", type=float, default=20.0, help="wait for uploads at exit"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--instance-id", default="", help="echoed by /status, for health checks"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    # botocore's debug logs include request headers; keep them out whatever --log-level says.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    os.makedirs(args.cache_dir, exist_ok=True)
    # One server per cache directory: the lock is held until the process exits.
    lock_file = open(os.path.join(args.cache_dir, "server.lock"), "w")  # noqa: SIM115
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error(
            "another cache server already uses %s: stop it or pick another --cache-dir",
            args.cache_dir,
        )
        return 2
    stats = Stats()
    disk = DiskTier(os.path.join(args.cache_dir, "blobs"), args.disk_limit)
    s3 = uploader = None
    describe_s3 = {"bucket": None}
    if args.bucket:
        breaker = CircuitBreaker(args.breaker_threshold, args.breaker_cooldown)
        s3 = S3Store(args, breaker, stats)
        uploader = Uploader(args.cache_dir, s3, stats, args)
        describe_s3 = {
            "bucket": args.bucket,
            "prefix": s3.prefix,
            "region": args.region or None,
            "endpoint_url": args.endpoint_url or None,
        }
    else:
        log.warning("no S3 bucket configured: serving the disk tier only")
    cache = BlobCache(disk, s3, uploader, stats)
    server = CacheHTTPServer(
        (args.host, args.port), cache, stats, describe_s3, args.instance_id
    )
    port = server.server_address[1]
    if args.port_file:
        temp = f"{args.port_file}.{os.getpid()}"
        with open(temp, "w") as port_file:
            port_file.write(f"{port}\n")
        os.replace(temp, args.port_file)
    threading.Thread(
        target=stats.report_forever, args=(args.stats_interval,), daemon=True
    ).start()

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "serving http://%s:%d (disk limit %s, bucket %s)",
        args.host,
        port,
        _human_bytes(args.disk_limit),
        describe_s3["bucket"] or "none",
    )
    server.serve_forever()
    server.server_close()
    if uploader is not None and not uploader.wait_idle(args.drain_timeout):
        log.warning("uploads still pending at exit: they resume at the next start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
