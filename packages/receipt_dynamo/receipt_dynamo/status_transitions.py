"""Which embedding status a line or word may move to next; the client's status writes enforce it.

Statuses only move forward, so when a line is in two batches the later poll cannot undo the
earlier one: SUCCESS (its vector is in a delta) and NOISE are final, and FAILED may still
become SUCCESS when another batch embedded the line. PENDING may go back to NONE: the batch
ended without the line's output (cancelled, expired, a retryable error), so it is sent again. Setting the status a line already has is
always allowed (a step that is redone).
"""

from __future__ import annotations

from receipt_dynamo.entities import EmbeddingStatus

EMBEDDING_STATUS_TRANSITIONS: dict[EmbeddingStatus, frozenset[EmbeddingStatus]] = {
    EmbeddingStatus.NONE: frozenset({EmbeddingStatus.PENDING, EmbeddingStatus.NOISE}),
    EmbeddingStatus.PENDING: frozenset(
        {EmbeddingStatus.SUCCESS, EmbeddingStatus.FAILED, EmbeddingStatus.NONE}
    ),
    EmbeddingStatus.FAILED: frozenset({EmbeddingStatus.SUCCESS}),
    EmbeddingStatus.SUCCESS: frozenset(),
    EmbeddingStatus.NOISE: frozenset(),
}


def embedding_status_sources(status: EmbeddingStatus) -> frozenset[EmbeddingStatus]:
    """The statuses from which a line or word may be set to `status`."""
    return frozenset(
        source
        for source, targets in EMBEDDING_STATUS_TRANSITIONS.items()
        if status in targets or source is status
    )
