"""Merging a collection's pending deltas into a new snapshot, under the collection's lock.

A snapshot's manifest records every delta id merged into it, so a delta is applied once no
matter how often its message is delivered. The pointer moves only after the new snapshot is
complete, only while the lock is still ours, and only if it still names the snapshot this
run started from (a conditional write), so it always names a complete snapshot that contains
everything earlier snapshots did, and a crash at any point leaves the previous one current.
Before giving the lock up, a run lists the deltas again and merges those that arrived while it
worked (at most MAX_ROUNDS times), so a delta whose message was turned away as "busy" is not
left waiting for an unrelated trigger. Then, still under the lock, retention deletes old
snapshots and applied deltas (`retention`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receipt_dynamo import ReceiptDynamoClient

from receipt_label.chroma_store import (
    download_directory,
    get_collection,
    open_database,
    read_records,
    upload_directory,
    upsert_records,
)
from receipt_label.compaction.deltas import (
    UnreadableDelta,
    download_delta,
    list_deltas,
    quarantine_delta,
    quarantined_deltas,
)
from receipt_label.compaction.layout import (
    SNAPSHOT_MANIFEST,
    check_collection,
    snapshot_prefix,
)
from receipt_label.compaction.lock import Heartbeat, LockLost
from receipt_label.compaction.pointer import (
    Pointer,
    PointerMoved,
    move_pointer,
    read_pointer_version,
)
from receipt_label.compaction.retention import (
    RetentionPolicy,
    RetentionResult,
    collect_garbage,
)
from receipt_label.compaction.snapshots import snapshot_manifest
from receipt_label.logs import get_logger, log

logger = get_logger("receipt_label.compaction")

MAX_ROUNDS = 4


@dataclass
class CompactionResult:
    collection: str
    action: str  # compacted | up_to_date | busy | lost
    snapshot: str | None = None
    applied_now: list[str] = field(default_factory=list)
    applied_deltas: set[str] = field(default_factory=set)
    vector_count: int = 0
    quarantined_now: dict[str, str] = field(default_factory=dict)  # id -> reason
    quarantined: set[str] = field(default_factory=set)  # now or by an earlier run
    detail: str | None = None
    retention: RetentionResult | None = None

    def to_json(self) -> dict[str, Any]:
        result = {
            "collection": self.collection,
            "action": self.action,
            "snapshot": self.snapshot,
            "applied_now": self.applied_now,
            "vector_count": self.vector_count,
            "quarantined_now": [
                {"delta_id": delta_id, "reason": reason}
                for delta_id, reason in sorted(self.quarantined_now.items())
            ],
        }
        if self.detail is not None:
            result["detail"] = self.detail
        if self.retention is not None:
            result["retention"] = self.retention.to_json()
        return result


def _default_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


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
        retention: RetentionPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.s3, self.bucket, self.dynamo = s3, bucket, dynamo
        self.lock_ttl_seconds = lock_ttl_seconds
        self.owner = owner or f"compactor-{uuid.uuid4()}"
        self._stamp = stamp or _default_stamp
        self.retention = retention or RetentionPolicy()
        self._clock = clock

    def compact(self, collection: str) -> CompactionResult:
        check_collection(collection)
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
            with Heartbeat(
                self.dynamo, collection, self.owner, self.lock_ttl_seconds
            ) as heartbeat:
                result, pointer = self._compact_locked(collection, heartbeat)
                result.retention = self._collect_garbage(result, pointer, heartbeat)
                return result
        except LockLost as lost:
            log(
                logger,
                logging.WARNING,
                "compaction lost its lock; the pointer was left to the new holder",
                collection=collection,
                owner=self.owner,
                detail=str(lost),
            )
            return CompactionResult(collection, "lost", detail=str(lost))
        finally:
            self.dynamo.release_lock(collection, self.owner)

    def _compact_locked(
        self, collection: str, heartbeat: Heartbeat
    ) -> tuple[CompactionResult, Pointer]:
        """The result, and the pointer as this run last read or wrote it."""
        pointer = read_pointer_version(self.s3, self.bucket, collection)
        manifest = snapshot_manifest(self.s3, self.bucket, collection, pointer.stamp)
        result = CompactionResult(
            collection,
            "up_to_date",
            pointer.stamp,
            applied_deltas=set(manifest["applied_deltas"]),
            vector_count=manifest.get("vector_count", 0),
            quarantined=quarantined_deltas(self.s3, self.bucket, collection),
        )
        with tempfile.TemporaryDirectory(prefix="compaction-") as workdir:
            database = Path(workdir) / "snapshot"
            for _ in range(MAX_ROUNDS):
                listing = list_deltas(
                    self.s3,
                    self.bucket,
                    collection,
                    result.applied_deltas | result.quarantined,
                )
                for delta_id, reason in listing.unreadable.items():
                    self._quarantine(result, delta_id, reason)
                if not listing.complete:
                    return result, pointer
                if not database.exists():
                    database.mkdir()
                    if pointer.stamp is not None:
                        download_directory(
                            self.s3,
                            self.bucket,
                            snapshot_prefix(collection, pointer.stamp),
                            manifest,
                            database,
                        )
                merged, vector_count = self._merge(
                    database, Path(workdir), result, listing.complete
                )
                if merged:
                    pointer = self._publish(
                        database, result, pointer, merged, vector_count, heartbeat
                    )
            log(
                logger,
                logging.WARNING,
                "compaction stopped after its last round; newer deltas wait for the next run",
                collection=collection,
                rounds=MAX_ROUNDS,
            )
            return result, pointer

    def _collect_garbage(
        self, result: CompactionResult, pointer: Pointer, heartbeat: Heartbeat
    ) -> RetentionResult:
        """Retention after the merge; its failure is logged and reported, and the merge stands."""
        try:
            return collect_garbage(
                self.s3,
                self.bucket,
                result.collection,
                pointer,
                lock_held=heartbeat.still_held,
                quarantined=result.quarantined,
                policy=self.retention,
                now=self._clock(),
            )
        # The snapshot is published whatever happens here; the next compaction retries.
        except Exception as error:
            logger.exception(
                "retention failed",
                extra={"fields": {"collection": result.collection}},
            )
            return RetentionResult(stopped=f"failed: {error}")

    def _merge(
        self, database: Path, workdir: Path, result: CompactionResult, deltas: list
    ) -> tuple[list[str], int]:
        """Upserts each readable delta into the local snapshot; quarantines the others."""
        merged = []
        with open_database(database) as client:
            target = get_collection(client, result.collection)
            for delta in deltas:
                delta_dir = workdir / f"delta-{uuid.uuid4().hex}"
                try:
                    download_delta(
                        self.s3, self.bucket, result.collection, delta, delta_dir
                    )
                except UnreadableDelta as error:
                    self._quarantine(result, delta["delta_id"], str(error))
                    shutil.rmtree(delta_dir, ignore_errors=True)
                    continue
                with open_database(delta_dir) as delta_client:
                    for records in read_records(
                        get_collection(delta_client, result.collection)
                    ):
                        upsert_records(target, records, client)
                shutil.rmtree(delta_dir)
                merged.append(delta["delta_id"])
            return merged, target.count()

    def _publish(
        self,
        database: Path,
        result: CompactionResult,
        pointer: Pointer,
        merged: list[str],
        vector_count: int,
        heartbeat: Heartbeat,
    ) -> Pointer:
        """Uploads the local snapshot and moves the pointer to it; LockLost if that is no longer ours to do."""
        collection = result.collection
        applied = result.applied_deltas | set(merged)
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
                "parent": pointer.stamp,
                "applied_deltas": sorted(applied),
                "vector_count": vector_count,
                "created_at": self._clock(),
            },
        )
        # The lease check keeps a run that knows it lost from writing at all; the conditional
        # write stops one whose lease ran out after the check (a stalled or retried PUT).
        if not heartbeat.still_held():
            raise LockLost(
                f"lost the {collection} compaction lock before moving the pointer; snapshot {stamp} unused"
            )
        try:
            pointer = move_pointer(self.s3, self.bucket, collection, pointer, stamp)
        except PointerMoved as moved:
            raise LockLost(f"{moved}; snapshot {stamp} unused") from None
        log(
            logger,
            logging.INFO,
            "compacted",
            collection=collection,
            snapshot=stamp,
            parent=result.snapshot,
            applied_now=merged,
            vector_count=vector_count,
        )
        result.action, result.snapshot, result.vector_count = (
            "compacted",
            stamp,
            vector_count,
        )
        result.applied_now += merged
        result.applied_deltas = applied
        return pointer

    def _quarantine(self, result: CompactionResult, delta_id: str, reason: str) -> None:
        quarantine_delta(
            self.s3, self.bucket, result.collection, delta_id, reason, self.owner
        )
        result.quarantined_now[delta_id] = reason
        result.quarantined.add(delta_id)
