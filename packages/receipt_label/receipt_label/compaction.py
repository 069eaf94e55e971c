"""Deltas and snapshots of the embedding collections in S3, and merging deltas into snapshots.

Layout under the ChromaDB bucket, per collection:
  {collection}/delta/{delta_id}/                      one poll's vectors, `_delta.json` last
  {collection}/snapshot/timestamped/{stamp}/          a full database, `_snapshot.json` last
  {collection}/snapshot/latest-pointer.txt            the stamp of the current snapshot

A snapshot's manifest records every delta id merged into it, so a delta is applied once no
matter how often its message is delivered. The pointer is rewritten only after the new
snapshot is complete and only while this compactor still holds the lock, so it always names
a complete snapshot and a crash at any point leaves the previous one current.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from botocore.exceptions import ClientError
from receipt_dynamo import BatchType, ReceiptDynamoClient

from receipt_label.chroma_store import (
    VectorRecord,
    download_directory,
    get_collection,
    open_database,
    read_manifest,
    read_records,
    upload_directory,
    upsert_records,
    write_database,
)
from receipt_label.logs import get_logger, log

logger = get_logger("receipt_label.compaction")

COLLECTIONS = {
    BatchType.LINE_EMBEDDING: "receipt_lines",
    BatchType.WORD_EMBEDDING: "receipt_words",
}
DELTA_MANIFEST = "_delta.json"
SNAPSHOT_MANIFEST = "_snapshot.json"
_DELTA_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def delta_prefix(collection: str, delta_id: str) -> str:
    return f"{collection}/delta/{delta_id}/"


def snapshot_prefix(collection: str, stamp: str) -> str:
    return f"{collection}/snapshot/timestamped/{stamp}/"


def pointer_key(collection: str) -> str:
    return f"{collection}/snapshot/latest-pointer.txt"


def parse_delta_key(collection: str, delta_key: str) -> str:
    """The delta id in `{collection}/delta/{delta_id}/`; ValueError if the key has another shape."""
    prefix = f"{collection}/delta/"
    delta_id = (
        delta_key.removeprefix(prefix).removesuffix("/")
        if delta_key.startswith(prefix)
        else ""
    )
    if not delta_key.endswith("/") or not _DELTA_ID.match(delta_id):
        raise ValueError(
            f"delta_key {delta_key!r} is not of the form {prefix}<delta id>/"
        )
    return delta_id


@dataclass(frozen=True)
class DeltaInfo:
    delta_key: str
    collection: str
    vector_count: int


def write_delta(
    s3: Any, bucket: str, collection: str, delta_id: str, records: list[VectorRecord]
) -> DeltaInfo:
    """Builds a ChromaDB database of `records` under a temporary directory and uploads it."""
    if collection not in COLLECTIONS.values():
        raise ValueError(
            f"unknown collection {collection!r}; expected one of {sorted(COLLECTIONS.values())}"
        )
    prefix = delta_prefix(collection, delta_id)
    with tempfile.TemporaryDirectory(prefix="delta-") as workdir:
        database = Path(workdir) / "chroma"
        write_database(database, collection, records)
        upload_directory(
            s3,
            bucket,
            database,
            prefix,
            DELTA_MANIFEST,
            {
                "delta_id": delta_id,
                "collection": collection,
                "vector_count": len(records),
                "written_at": time.time(),
            },
        )
    return DeltaInfo(delta_key=prefix, collection=collection, vector_count=len(records))


def read_pointer(s3: Any, bucket: str, collection: str) -> str | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=pointer_key(collection))["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return body.decode().strip() or None


def current_snapshot(s3: Any, bucket: str, collection: str) -> tuple[str | None, dict]:
    """The stamp and manifest the pointer names; (None, empty manifest) before the first compaction."""
    stamp = read_pointer(s3, bucket, collection)
    if stamp is None:
        return None, {"applied_deltas": [], "files": [], "vector_count": 0}
    manifest = read_manifest(
        s3, bucket, snapshot_prefix(collection, stamp), SNAPSHOT_MANIFEST
    )
    if manifest is None:
        raise RuntimeError(
            f"s3://{bucket}/{pointer_key(collection)} names snapshot {stamp}, which has no manifest"
        )
    return stamp, manifest


def download_snapshot(
    s3: Any, bucket: str, collection: str, local: Path
) -> tuple[str | None, dict]:
    stamp, manifest = current_snapshot(s3, bucket, collection)
    local.mkdir(parents=True, exist_ok=True)
    if stamp is not None:
        download_directory(
            s3, bucket, snapshot_prefix(collection, stamp), manifest, local
        )
    return stamp, manifest


class LockLost(RuntimeError):
    """Another compactor took the lock over (ours expired); this run must not write the pointer."""


class _Heartbeat:
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

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class CompactionResult:
    collection: str
    action: str  # compacted | up_to_date | busy
    snapshot: str | None = None
    applied_now: list[str] = field(default_factory=list)
    applied_deltas: set[str] = field(default_factory=set)
    vector_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "action": self.action,
            "snapshot": self.snapshot,
            "applied_now": self.applied_now,
            "vector_count": self.vector_count,
        }


class Compactor:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        dynamo: ReceiptDynamoClient,
        *,
        lock_ttl_seconds: float = 300.0,
        owner: str | None = None,
        stamp: Callable[[], str] | None = None,
    ):
        self.s3, self.bucket, self.dynamo = s3, bucket, dynamo
        self.lock_ttl_seconds = lock_ttl_seconds
        self.owner = owner or f"compactor-{uuid.uuid4()}"
        self._stamp = stamp or (
            lambda: (
                time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                + "-"
                + uuid.uuid4().hex[:8]
            )
        )

    def pending_deltas(self, collection: str, applied: set[str]) -> list[dict]:
        """Manifests of complete deltas not yet applied, oldest first."""
        manifests = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{collection}/delta/", Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                delta_id = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                if delta_id in applied:
                    continue
                manifest = read_manifest(
                    self.s3, self.bucket, common["Prefix"], DELTA_MANIFEST
                )
                if manifest is not None:
                    manifests.append(manifest)
        return sorted(manifests, key=lambda m: (m.get("written_at", 0), m["delta_id"]))

    def compact(self, collection: str) -> CompactionResult:
        if collection not in COLLECTIONS.values():
            raise ValueError(
                f"unknown collection {collection!r}; expected one of {sorted(COLLECTIONS.values())}"
            )
        if not self.dynamo.acquire_lock(collection, self.owner, self.lock_ttl_seconds):
            log(
                logger,
                logging.INFO,
                "compaction lock busy",
                collection=collection,
                owner=self.owner,
            )
            return CompactionResult(collection, "busy")
        try:
            with _Heartbeat(
                self.dynamo, collection, self.owner, self.lock_ttl_seconds
            ) as heartbeat:
                return self._compact_locked(collection, heartbeat)
        finally:
            self.dynamo.release_lock(collection, self.owner)

    def _compact_locked(
        self, collection: str, heartbeat: _Heartbeat
    ) -> CompactionResult:
        with tempfile.TemporaryDirectory(prefix="compaction-") as workdir:
            database = Path(workdir) / "snapshot"
            database.mkdir()
            parent, manifest = current_snapshot(self.s3, self.bucket, collection)
            applied = set(manifest["applied_deltas"])
            pending = self.pending_deltas(collection, applied)
            if not pending:
                return CompactionResult(
                    collection,
                    "up_to_date",
                    parent,
                    [],
                    applied,
                    manifest.get("vector_count", 0),
                )
            if parent is not None:
                download_directory(
                    self.s3,
                    self.bucket,
                    snapshot_prefix(collection, parent),
                    manifest,
                    database,
                )
            with open_database(database) as client:
                target = get_collection(client, collection)
                for number, delta in enumerate(pending):
                    delta_dir = Path(workdir) / f"delta-{number}"
                    prefix = delta_prefix(collection, delta["delta_id"])
                    download_directory(self.s3, self.bucket, prefix, delta, delta_dir)
                    with open_database(delta_dir) as delta_client:
                        for records in read_records(
                            get_collection(delta_client, collection)
                        ):
                            upsert_records(target, records, client)
                    shutil.rmtree(delta_dir)
                vector_count = target.count()
            applied_now = [d["delta_id"] for d in pending]
            applied |= set(applied_now)
            stamp = self._stamp()
            upload_directory(
                self.s3,
                self.bucket,
                database,
                snapshot_prefix(collection, stamp),
                SNAPSHOT_MANIFEST,
                {
                    "collection": collection,
                    "stamp": stamp,
                    "parent": parent,
                    "applied_deltas": sorted(applied),
                    "vector_count": vector_count,
                },
            )
            # Fencing: the pointer moves only if the lock is still ours, and refreshing it now
            # keeps anyone else out for a full TTL while the pointer is written.
            if heartbeat.lost.is_set() or not self.dynamo.refresh_lock(
                collection, self.owner, self.lock_ttl_seconds
            ):
                raise LockLost(
                    f"lost the {collection} compaction lock before moving the pointer; snapshot {stamp} unused"
                )
            self.s3.put_object(
                Bucket=self.bucket,
                Key=pointer_key(collection),
                Body=stamp.encode() + b"\n",
                ContentType="text/plain",
            )
            log(
                logger,
                logging.INFO,
                "compacted",
                collection=collection,
                snapshot=stamp,
                parent=parent,
                applied_now=applied_now,
                vector_count=vector_count,
            )
            return CompactionResult(
                collection, "compacted", stamp, applied_now, applied, vector_count
            )
