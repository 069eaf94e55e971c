"""ChromaDB databases on local disk and their copies in S3 (deltas and snapshots).

A directory in S3 counts as complete only once its manifest exists: the manifest is uploaded
last and lists every file with its size and SHA-256, and downloads verify both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

# chromadb reads this when it is imported; the pipeline never sends telemetry.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

COLLECTION_SPACE = "cosine"
READ_PAGE_SIZE = 1000


@dataclass(frozen=True)
class VectorRecord:
    id: str
    embedding: list[float]
    document: str
    metadata: dict[str, Any]


@contextmanager
def open_database(path: Path) -> Iterator[Any]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(path), settings=Settings(anonymized_telemetry=False, allow_reset=False)
    )
    try:
        yield client
    finally:
        # Closing stops chromadb's system for this path, so every file is written before upload.
        client.close()


def get_collection(client: Any, name: str) -> Any:
    return client.get_or_create_collection(
        name, metadata={"hnsw:space": COLLECTION_SPACE}
    )


def upsert_records(collection: Any, records: list[VectorRecord], client: Any) -> None:
    step = max(1, min(client.get_max_batch_size(), 5000))
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        collection.upsert(
            ids=[r.id for r in chunk],
            embeddings=[r.embedding for r in chunk],
            documents=[r.document for r in chunk],
            metadatas=[r.metadata for r in chunk],
        )


def read_records(collection: Any) -> Iterator[list[VectorRecord]]:
    offset = 0
    while True:
        page = collection.get(
            include=["embeddings", "documents", "metadatas"],
            limit=READ_PAGE_SIZE,
            offset=offset,
        )
        if not page["ids"]:
            return
        yield [
            VectorRecord(
                id=i,
                embedding=list(map(float, e)),
                document=d or "",
                metadata=dict(m or {}),
            )
            for i, e, d, m in zip(
                page["ids"], page["embeddings"], page["documents"], page["metadatas"]
            )
        ]
        offset += len(page["ids"])


def write_database(
    path: Path, collection_name: str, records: list[VectorRecord]
) -> None:
    with open_database(path) as client:
        upsert_records(get_collection(client, collection_name), records, client)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upload_directory(
    s3: Any, bucket: str, local: Path, prefix: str, manifest_name: str, manifest: dict
) -> dict:
    """Uploads every file under `local`, then the manifest naming them; returns the manifest."""
    files = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = path.relative_to(local).as_posix()
        s3.upload_file(str(path), bucket, prefix + relative)
        files.append(
            {"path": relative, "size": path.stat().st_size, "sha256": _sha256(path)}
        )
    manifest = {**manifest, "files": files}
    s3.put_object(
        Bucket=bucket,
        Key=prefix + manifest_name,
        Body=json.dumps(manifest, sort_keys=True, indent=1).encode(),
        ContentType="application/json",
    )
    return manifest


def read_manifest(s3: Any, bucket: str, prefix: str, manifest_name: str) -> dict | None:
    """The manifest of a complete directory, or None while it is missing (incomplete or absent)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + manifest_name)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


class CorruptCopyError(RuntimeError):
    """A downloaded file does not match its manifest."""


def download_directory(
    s3: Any, bucket: str, prefix: str, manifest: dict, local: Path
) -> None:
    for entry in manifest["files"]:
        relative = Path(entry["path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise CorruptCopyError(
                f"manifest at s3://{bucket}/{prefix} names a path outside it: {entry['path']}"
            )
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, prefix + entry["path"], str(target))
        if target.stat().st_size != entry["size"] or _sha256(target) != entry["sha256"]:
            raise CorruptCopyError(
                f"s3://{bucket}/{prefix}{entry['path']} does not match its manifest"
            )
