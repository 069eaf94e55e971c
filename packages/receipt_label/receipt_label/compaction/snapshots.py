"""Snapshots: full databases of a collection in S3; the pointer names the current one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from receipt_label.chroma_store import download_directory, read_manifest
from receipt_label.compaction.layout import (
    SNAPSHOT_MANIFEST,
    pointer_key,
    snapshot_prefix,
)
from receipt_label.compaction.pointer import read_pointer

EMPTY_MANIFEST: dict = {"applied_deltas": [], "files": [], "vector_count": 0}


def snapshot_manifest(s3: Any, bucket: str, collection: str, stamp: str | None) -> dict:
    """The manifest of snapshot `stamp`; an empty one for None (before the first compaction)."""
    if stamp is None:
        return dict(EMPTY_MANIFEST)
    manifest = read_manifest(
        s3, bucket, snapshot_prefix(collection, stamp), SNAPSHOT_MANIFEST
    )
    if manifest is None:
        raise RuntimeError(
            f"s3://{bucket}/{pointer_key(collection)} names snapshot {stamp}, which has no manifest"
        )
    return manifest


def current_snapshot(s3: Any, bucket: str, collection: str) -> tuple[str | None, dict]:
    """The stamp and manifest the pointer names; (None, empty manifest) before the first compaction."""
    stamp = read_pointer(s3, bucket, collection)
    return stamp, snapshot_manifest(s3, bucket, collection, stamp)


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
