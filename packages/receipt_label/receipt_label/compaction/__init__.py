"""Deltas and snapshots of the embedding collections in S3, and merging deltas into snapshots.

One module per job: `layout` (keys), `deltas` (writing, listing, quarantine), `snapshots`,
`pointer` (the conditional latest-pointer), `lock` (the lease heartbeat), `compactor` and
`retention` (deleting old snapshots and applied deltas).
"""

from receipt_label.compaction.compactor import (
    MAX_ROUNDS,
    CompactionResult,
    Compactor,
)
from receipt_label.compaction.deltas import (
    DeltaInfo,
    UnreadableDelta,
    attempt_delta_id,
    list_deltas,
    quarantined_deltas,
    write_delta,
)
from receipt_label.compaction.layout import (
    COLLECTIONS,
    DELTA_MANIFEST,
    SNAPSHOT_MANIFEST,
    delta_prefix,
    parse_delta_key,
    pointer_key,
    quarantine_key,
    snapshot_prefix,
)
from receipt_label.compaction.lock import LockLost
from receipt_label.compaction.pointer import (
    Pointer,
    PointerMoved,
    move_pointer,
    read_pointer,
    read_pointer_version,
)
from receipt_label.compaction.retention import (
    RetentionPolicy,
    RetentionResult,
    collect_garbage,
)
from receipt_label.compaction.snapshots import current_snapshot, download_snapshot

__all__ = [
    "COLLECTIONS",
    "DELTA_MANIFEST",
    "MAX_ROUNDS",
    "SNAPSHOT_MANIFEST",
    "CompactionResult",
    "Compactor",
    "DeltaInfo",
    "LockLost",
    "Pointer",
    "PointerMoved",
    "RetentionPolicy",
    "RetentionResult",
    "UnreadableDelta",
    "attempt_delta_id",
    "collect_garbage",
    "current_snapshot",
    "delta_prefix",
    "download_snapshot",
    "list_deltas",
    "move_pointer",
    "parse_delta_key",
    "pointer_key",
    "quarantine_key",
    "quarantined_deltas",
    "read_pointer",
    "read_pointer_version",
    "snapshot_prefix",
    "write_delta",
]
