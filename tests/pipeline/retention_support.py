"""Helpers of the retention tests: a clock the test moves, named deltas, what is left in S3.

Ages come from the injected clock: real time plus an offset the test moves (S3's LastModified,
which retention uses only for objects without a manifest, stays real time). Steps of 1.1 h against
a grace of 2 h keep every comparison far from its boundary.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from receipt_dynamo import ReceiptDynamoClient
from receipt_label.chroma_store import VectorRecord, get_collection, open_database
from receipt_label.compaction import (
    Compactor,
    RetentionPolicy,
    download_snapshot,
    write_delta,
)

from tests.pipeline.fake_openai import fake_embedding

COLLECTION = "receipt_lines"
IMAGE = "5b1d9e0a-2c3f-4e5a-9b8c-7d6e5f4a3b2c"
HOUR = 3600.0
STEP = 1.1 * HOUR
POLICY = RetentionPolicy(keep_snapshots=2, grace_seconds=2 * HOUR, max_deletes=1000)


class Clock:
    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def retention_compactor(
    aws, clock: Clock, s3=None, owner: str | None = None
) -> Compactor:
    stamps = itertools.count(1)
    return Compactor(
        s3 or aws.s3,
        aws.chromadb_bucket,
        ReceiptDynamoClient(aws.table_name, aws.dynamodb),
        owner=owner,
        stamp=lambda: f"{owner or 'compactor'}-{next(stamps):04d}",
        retention=POLICY,
        clock=clock,
    )


_RECEIPTS: dict[str, int] = {}


def named_records(name: str, count: int = 3) -> list[VectorRecord]:
    receipt = _RECEIPTS.setdefault(name, len(_RECEIPTS) + 1)
    return [
        VectorRecord(
            f"IMAGE#{IMAGE}#RECEIPT#{receipt:05d}#LINE#{n:05d}",
            fake_embedding(f"receipt {name} line {n} total {n * 7}.{len(name)}"),
            f"receipt {name} line {n}",
            {"line_id": n},
        )
        for n in range(1, count + 1)
    ]


def write_named_delta(aws, name: str, s3=None) -> list[VectorRecord]:
    records = named_records(name)
    write_delta(s3 or aws.s3, aws.chromadb_bucket, COLLECTION, name, records)
    return records


def stored(aws, kind: str) -> set[str]:
    """The snapshot stamps or delta ids with any object left in S3."""
    root = {
        "snapshot": f"{COLLECTION}/snapshot/timestamped/",
        "delta": f"{COLLECTION}/delta/",
    }[kind]
    return {
        key.removeprefix(root).split("/", 1)[0]
        for key in aws.s3_keys(aws.chromadb_bucket, root)
    }


def assert_latest_snapshot_answers(aws, tmp_path: Path, records: list[VectorRecord]):
    """Each line's own embedding finds that line first in the current snapshot."""
    local = tmp_path / f"latest-{len(list(tmp_path.iterdir()))}"
    download_snapshot(aws.s3, aws.chromadb_bucket, COLLECTION, local)
    with open_database(local) as client:
        collection = get_collection(client, COLLECTION)
        assert collection.count() == len(records)
        found = collection.query(
            query_embeddings=[r.embedding for r in records], n_results=1
        )
    assert [ids[0] for ids in found["ids"]] == [r.id for r in records]
