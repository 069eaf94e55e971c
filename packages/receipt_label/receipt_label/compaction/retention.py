"""Retention: deleting a collection's old snapshots and applied deltas, inside compaction, under its lock.

A compaction runs this after its pointer write (or after finding nothing to merge) while it still
holds the lock, and deletes at most `max_deletes` objects, those deletable longest first; the rest
waits for the next compaction. With T = `grace_seconds` and N = `keep_snapshots`:

- Snapshots the pointer has named form a chain through their manifests' `parent`: X0 (current),
  X1 (the one X0 replaced), X2, ... X0 to X(N-1) are kept. Xk is deleted once X(k-2) was made
  more than T ago: X(k-2)'s compactor read the pointer naming X(k-1) before making it, so the
  pointer had stopped naming Xk by then, and a reader that fetched the pointer naming Xk has had
  T to load it. (Xk's own age says nothing: it may have been current until a moment ago. Nothing
  dates X1's retirement, hence N >= 2.)
- A complete snapshot off the chain was never named (its compactor lost the race). It is deleted
  once made more than T ago if its parent is not the current snapshot: its pointer write,
  conditional on the parent's ETag, can then never succeed.
- A delta is deleted once the current snapshot has applied it and the oldest chain snapshot that
  lists it was made more than T ago. A compaction moves the pointer only from the snapshot it
  started from, so only compactions starting from the current one (which skip the delta) can
  still publish; the grace lets a stale compaction that listed it before it was applied finish
  without finding it half-gone (it would quarantine it for nothing).
- A snapshot or delta without its manifest (an upload in progress or abandoned by a crash, or a
  deletion cut short) is deleted once its newest object is older than T. T is longer than a
  Lambda can run (the configuration enforces >= 900 s), so nobody is still writing it.
- Quarantined deltas that no snapshot applied are kept, files and record: the record says what is
  wrong with the files, and deleting it retries the delta, which needs them. The lifecycle rule
  of `//tools/cache:lifecycle --kind chromadb` expires records after 90 days; the next compaction
  then applies the delta (and retention later deletes it) or quarantines it again.

Before each delete request the lock is refreshed (the fencing check) and the pointer's ETag is
compared with the one this compaction wrote or read; if either changed, retention stops. Manifests
go first, so a snapshot or delta half-deleted by a crash or the budget is incomplete, never taken
for complete, and a later run finishes it.

Times: a snapshot's `created_at` (its compactor's clock, in its manifest; S3's LastModified of the
manifest for snapshots made before that was recorded); S3's LastModified for incomplete ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from receipt_label.compaction.layout import (
    DELTA_MANIFEST,
    SNAPSHOT_MANIFEST,
    deltas_root,
    pointer_key,
    snapshots_root,
)
from receipt_label.compaction.pointer import Pointer
from receipt_label.logs import get_logger, log

logger = get_logger("receipt_label.compaction")

DELETE_REQUEST_KEYS = 1000  # S3's limit for one DeleteObjects request


@dataclass(frozen=True)
class RetentionPolicy:
    keep_snapshots: int = 3
    grace_seconds: float = 3600.0
    max_deletes: int = 1000

    def __post_init__(self) -> None:
        if self.keep_snapshots < 2:
            raise ValueError(
                f"keep_snapshots must be at least 2 (the current snapshot and the one it "
                f"replaced, which a reader may still be loading); got {self.keep_snapshots}"
            )
        if self.max_deletes < 1:
            raise ValueError(f"max_deletes must be at least 1; got {self.max_deletes}")


@dataclass
class RetentionResult:
    deleted_snapshots: list[str] = field(default_factory=list)
    deleted_deltas: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    kept_quarantined: list[str] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before deleting all it could

    def to_json(self) -> dict[str, Any]:
        return {
            "deleted_snapshots": self.deleted_snapshots,
            "deleted_deltas": self.deleted_deltas,
            "deleted_objects": self.deleted_objects,
            "kept_quarantined": len(self.kept_quarantined),
            "stopped": self.stopped,
        }


@dataclass
class _Directory:
    """The objects under one snapshot's or delta's prefix."""

    kind: str  # snapshot | delta
    name: str
    keys: list[str] = field(default_factory=list)
    newest: float = 0.0  # LastModified, seconds since the epoch
    manifest_key: str | None = None

    def keys_manifest_first(self) -> list[str]:
        rest = sorted(key for key in self.keys if key != self.manifest_key)
        return [self.manifest_key, *rest] if self.manifest_key else rest


def _directories(
    s3: Any, bucket: str, root: str, kind: str, manifest_name: str
) -> dict[str, _Directory]:
    found: dict[str, _Directory] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
    for page in pages:
        for obj in page.get("Contents", []):
            name, _, rest = obj["Key"].removeprefix(root).partition("/")
            if not rest:
                continue  # not inside a directory; nothing of ours
            directory = found.setdefault(name, _Directory(kind, name))
            directory.keys.append(obj["Key"])
            directory.newest = max(directory.newest, obj["LastModified"].timestamp())
            if rest == manifest_name:
                directory.manifest_key = obj["Key"]
    return found


def _chain(current: str, manifests: dict[str, dict]) -> list[str]:
    """The snapshots the pointer named, newest first, as far back as their manifests remain."""
    chain, stamp = [], current
    while stamp in manifests and stamp not in chain:
        chain.append(stamp)
        stamp = manifests[stamp].get("parent")
    return chain


def collect_garbage(
    s3: Any,
    bucket: str,
    collection: str,
    current: Pointer,
    *,
    lock_held: Callable[[], bool],
    quarantined: set[str],
    policy: RetentionPolicy,
    now: float,
) -> RetentionResult:
    """Deletes what the rules above allow, at most `policy.max_deletes` objects."""
    result = RetentionResult()
    if current.stamp is None:
        return result
    started = time.monotonic()
    cutoff = now - policy.grace_seconds
    snapshots = _directories(
        s3, bucket, snapshots_root(collection), "snapshot", SNAPSHOT_MANIFEST
    )
    manifests = {
        name: json.loads(
            s3.get_object(Bucket=bucket, Key=d.manifest_key)["Body"].read()
        )
        for name, d in snapshots.items()
        if d.manifest_key is not None
    }
    if current.stamp not in manifests:
        raise RuntimeError(
            f"s3://{bucket}/{pointer_key(collection)} names snapshot {current.stamp}, "
            "which has no manifest; retention deletes nothing"
        )
    made = {
        name: float(m.get("created_at") or snapshots[name].newest)
        for name, m in manifests.items()
    }
    chain = _chain(current.stamp, manifests)
    on_chain = set(chain)
    # (since when deletable, directory): the longest deletable go first.
    doomed: list[tuple[float, _Directory]] = [
        (made[chain[k - 2]], snapshots[stamp])
        for k, stamp in enumerate(chain)
        if k >= policy.keep_snapshots and made[chain[k - 2]] <= cutoff
    ]
    for name, directory in snapshots.items():
        if name in on_chain:
            continue
        if directory.manifest_key is None:
            if directory.newest <= cutoff:
                doomed.append((directory.newest, directory))
        elif manifests[name].get("parent") != current.stamp and made[name] <= cutoff:
            doomed.append((made[name], directory))

    deltas = _directories(s3, bucket, deltas_root(collection), "delta", DELTA_MANIFEST)
    applied_since = _applied_since(
        chain,
        manifests,
        made,
        set(manifests[current.stamp]["applied_deltas"]) & set(deltas),
    )
    for name, directory in deltas.items():
        if name in applied_since:
            if applied_since[name] <= cutoff:
                doomed.append((applied_since[name], directory))
        elif name in quarantined:
            result.kept_quarantined.append(name)
        elif directory.manifest_key is None and directory.newest <= cutoff:
            doomed.append((directory.newest, directory))

    _delete(s3, bucket, collection, current, lock_held, policy, doomed, result)
    if result.deleted_objects or result.stopped:
        log(
            logger,
            logging.INFO,
            "retention",
            collection=collection,
            snapshot=current.stamp,
            duration_ms=round((time.monotonic() - started) * 1000),
            **result.to_json(),
        )
    return result


def _applied_since(
    chain: list[str],
    manifests: dict[str, dict],
    made: dict[str, float],
    wanted: set[str],
) -> dict[str, float]:
    """For each delta in `wanted`: when the oldest chain snapshot listing it was made."""
    since: dict[str, float] = {}
    for stamp in reversed(chain):
        listed = wanted.intersection(manifests[stamp]["applied_deltas"])
        since.update(dict.fromkeys(listed, made[stamp]))
        wanted -= listed
    return since


def _delete(
    s3: Any,
    bucket: str,
    collection: str,
    current: Pointer,
    lock_held: Callable[[], bool],
    policy: RetentionPolicy,
    doomed: list[tuple[float, _Directory]],
    result: RetentionResult,
) -> None:
    budget = policy.max_deletes
    chosen: list[tuple[_Directory, list[str]]] = []
    for _, directory in sorted(doomed, key=lambda d: (d[0], d[1].kind, d[1].name)):
        keys = directory.keys_manifest_first()
        if len(keys) > budget:
            result.stopped = f"reached max_deletes ({policy.max_deletes}); the next compaction goes on"
        if budget > 0:
            chosen.append((directory, keys[:budget]))
            budget -= len(chosen[-1][1])
    manifests = [keys[0] for d, keys in chosen if d.manifest_key is not None]
    others = [key for d, keys in chosen for key in keys if key != d.manifest_key]
    batches = [
        keys[i : i + DELETE_REQUEST_KEYS]
        for keys in (manifests, others)
        for i in range(0, len(keys), DELETE_REQUEST_KEYS)
    ]
    deleted: set[str] = set()
    for batch in batches:
        fenced = _fence(s3, bucket, collection, current, lock_held)
        if fenced is not None:
            result.stopped = fenced
            break
        response = s3.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
        )
        errors = response.get("Errors", [])
        deleted.update(set(batch) - {error.get("Key") for error in errors})
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"deleting s3://{bucket}/{first.get('Key')} failed: "
                f"{first.get('Code')} {first.get('Message')} ({len(errors)} keys failed)"
            )
    result.deleted_objects = len(deleted)
    for directory, _ in chosen:
        if deleted.issuperset(directory.keys):
            names = (
                result.deleted_snapshots
                if directory.kind == "snapshot"
                else result.deleted_deltas
            )
            names.append(directory.name)


def _fence(
    s3: Any,
    bucket: str,
    collection: str,
    current: Pointer,
    lock_held: Callable[[], bool],
) -> str | None:
    """Why this compaction may no longer delete, or None if it may."""
    if not lock_held():
        return "lost the compaction lock; deleting nothing more"
    try:
        etag = s3.head_object(Bucket=bucket, Key=pointer_key(collection))["ETag"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
        etag = None
    if etag != current.etag:
        return (
            f"s3://{bucket}/{pointer_key(collection)} no longer names {current.stamp} as "
            "this compaction left it; deleting nothing more"
        )
    return None
