"""Where a collection's deltas, snapshots, pointer and quarantine records live in the ChromaDB bucket.

{collection}/delta/{delta_id}/                  one poll attempt's vectors, `_delta.json` last
{collection}/snapshot/timestamped/{stamp}/      a full database, `_snapshot.json` last
{collection}/snapshot/latest-pointer.txt        the stamp of the current snapshot
{collection}/quarantine/{delta_id}.json         why a delta could not be read; it is skipped
"""

from __future__ import annotations

import re

from receipt_dynamo import BatchType

COLLECTIONS = {
    BatchType.LINE_EMBEDDING: "receipt_lines",
    BatchType.WORD_EMBEDDING: "receipt_words",
}
DELTA_MANIFEST = "_delta.json"
SNAPSHOT_MANIFEST = "_snapshot.json"
_DELTA_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_collection(collection: str) -> None:
    if collection not in COLLECTIONS.values():
        raise ValueError(
            f"unknown collection {collection!r}; expected one of {sorted(COLLECTIONS.values())}"
        )


def deltas_root(collection: str) -> str:
    return f"{collection}/delta/"


def delta_prefix(collection: str, delta_id: str) -> str:
    return f"{deltas_root(collection)}{delta_id}/"


def snapshots_root(collection: str) -> str:
    return f"{collection}/snapshot/timestamped/"


def snapshot_prefix(collection: str, stamp: str) -> str:
    return f"{snapshots_root(collection)}{stamp}/"


def pointer_key(collection: str) -> str:
    return f"{collection}/snapshot/latest-pointer.txt"


def quarantine_prefix(collection: str) -> str:
    return f"{collection}/quarantine/"


def quarantine_key(collection: str, delta_id: str) -> str:
    return f"{quarantine_prefix(collection)}{delta_id}.json"


def parse_delta_key(collection: str, delta_key: str) -> str:
    """The delta id in `{collection}/delta/{delta_id}/`; ValueError if the key has another shape."""
    prefix = deltas_root(collection)
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
