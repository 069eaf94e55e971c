"""Deltas: one poll attempt's vectors as a small ChromaDB database in S3, and their quarantine.

Each poll attempt writes under its own delta id (the batch id plus a random suffix), so two
overlapping polls of one batch never write the same keys; merging both copies is harmless
because the snapshot upserts by id. A delta that cannot be read anyway (a file missing or not
matching the manifest, a manifest that is not one) is quarantined: a record under
`{collection}/quarantine/` says why, compactions skip it, and deleting the record retries it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from receipt_label.chroma_store import (
    CorruptCopyError,
    VectorRecord,
    download_directory,
    upload_directory,
    write_database,
)
from receipt_label.compaction.layout import (
    DELTA_MANIFEST,
    check_collection,
    delta_prefix,
    deltas_root,
    quarantine_key,
    quarantine_prefix,
)
from receipt_label.logs import get_logger, log

logger = get_logger("receipt_label.compaction")


class UnreadableDelta(RuntimeError):
    """A delta's manifest or files are not what a complete delta has; retrying will not help."""


@dataclass(frozen=True)
class DeltaInfo:
    delta_key: str
    collection: str
    vector_count: int


def attempt_delta_id(batch_id: str) -> str:
    """A delta id of its own for one poll attempt of `batch_id`."""
    return f"{batch_id}_{uuid.uuid4().hex[:12]}"


def write_delta(
    s3: Any, bucket: str, collection: str, delta_id: str, records: list[VectorRecord]
) -> DeltaInfo:
    """Builds a ChromaDB database of `records` under a temporary directory and uploads it."""
    check_collection(collection)
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


@dataclass
class DeltaListing:
    complete: list[dict] = field(default_factory=list)  # manifests, oldest first
    unreadable: dict[str, str] = field(default_factory=dict)  # delta id -> reason


def list_deltas(s3: Any, bucket: str, collection: str, skip: set[str]) -> DeltaListing:
    """Complete deltas not in `skip`, and those whose manifest cannot be used."""
    listing = DeltaListing()
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=deltas_root(collection), Delimiter="/"
    )
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            delta_id = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
            if delta_id in skip:
                continue
            try:
                body = s3.get_object(
                    Bucket=bucket, Key=common["Prefix"] + DELTA_MANIFEST
                )["Body"].read()
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    continue  # still being written
                raise
            try:
                manifest = _checked_manifest(body, delta_id)
            except UnreadableDelta as error:
                listing.unreadable[delta_id] = str(error)
                continue
            listing.complete.append(manifest)
    listing.complete.sort(key=lambda m: (m.get("written_at", 0), m["delta_id"]))
    return listing


def _checked_manifest(body: bytes, delta_id: str) -> dict:
    try:
        manifest = json.loads(body)
    except ValueError:
        raise UnreadableDelta(f"{DELTA_MANIFEST} is not JSON") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("delta_id") != delta_id
        or not isinstance(manifest.get("files"), list)
        or not all(
            isinstance(f, dict) and {"path", "size", "sha256"} <= f.keys()
            for f in manifest["files"]
        )
    ):
        raise UnreadableDelta(
            f"{DELTA_MANIFEST} does not name delta {delta_id} with a list of files"
        )
    return manifest


def download_delta(
    s3: Any, bucket: str, collection: str, manifest: dict, local: Path
) -> None:
    """Downloads and verifies a delta; UnreadableDelta if a file is missing or does not match."""
    prefix = delta_prefix(collection, manifest["delta_id"])
    try:
        download_directory(s3, bucket, prefix, manifest, local)
    except CorruptCopyError as error:
        raise UnreadableDelta(str(error)) from None
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise UnreadableDelta(
                f"a file that s3://{bucket}/{prefix}{DELTA_MANIFEST} lists is missing"
            ) from None
        raise


def quarantined_deltas(s3: Any, bucket: str, collection: str) -> set[str]:
    prefix = quarantine_prefix(collection)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {
        obj["Key"].removeprefix(prefix).removesuffix(".json")
        for page in pages
        for obj in page.get("Contents", [])
    }


def quarantine_delta(
    s3: Any, bucket: str, collection: str, delta_id: str, reason: str, owner: str
) -> None:
    key = quarantine_key(collection, delta_id)
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(
            {
                "delta_id": delta_id,
                "collection": collection,
                "reason": reason,
                "quarantined_by": owner,
                "quarantined_at": time.time(),
            },
            indent=1,
        ).encode(),
        ContentType="application/json",
    )
    log(
        logger,
        logging.ERROR,
        "delta quarantined",
        collection=collection,
        delta_id=delta_id,
        reason=reason,
        record=f"s3://{bucket}/{key}",
    )
