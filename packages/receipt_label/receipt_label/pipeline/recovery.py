"""Submissions that claimed lines but never recorded their batch: adopt the batch or free the lines.

A submitter can die after claiming lines, or after OpenAI created the batch but before the
BatchSummary was written. Its claims carry its batch id; OpenAI's batch (if any) carries the
same id in its metadata. A redelivered submission looks for its own batch at once; anyone else
looks only once the claim has expired, which takes longer than a Lambda can run.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    BatchType,
    ClaimState,
    EmbeddingClaims,
    parse_custom_id,
)

from receipt_label.logs import get_logger, log
from receipt_label.pipeline.batch_output import requested_ids
from receipt_label.pipeline.openai_batches import find_batch
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")


def unfinished_holders(
    states: dict[str, ClaimState], own_batch_id: str, now: float, lease: float
) -> dict[str, float]:
    """Batch ids whose unconfirmed claims are worth looking up at OpenAI, with when each began."""
    holders: dict[str, float] = {}
    for state in states.values():
        if state.unconfirmed and (
            state.claim_batch_id == own_batch_id or state.expired(now)
        ):
            began = (
                state.claim_started
                if state.claim_started is not None
                else state.claim_expires - lease
            )
            holders[state.claim_batch_id] = min(
                began, holders.get(state.claim_batch_id, began)
            )
    return holders


def adopt_if_created(runtime: Runtime, holder: str, began: float) -> Any | None:
    """Records the OpenAI batch that `holder`'s submission created, if there is one."""
    batch = find_batch(runtime.openai, holder, began)
    if batch is None:
        return None
    adopt_batch(runtime, holder, batch)
    return batch


def adopt_batch(runtime: Runtime, holder: str, batch: Any) -> None:
    """Writes the BatchSummary a crashed submitter did not, and confirms its lines' claims."""
    metadata = batch.metadata or {}
    content = runtime.openai.files.content(batch.input_file_id).content
    targets = [parse_custom_id(custom_id) for _, custom_id in requested_ids(content)]
    summary = BatchSummary(
        batch_id=holder,
        batch_type=BatchType(metadata.get("batch_type", BatchType.LINE_EMBEDDING)),
        openai_batch_id=batch.id,
        submitted_at=datetime.fromtimestamp(batch.created_at, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        status=BatchStatus.PENDING,
        receipt_refs=tuple(sorted({(t.image_id, t.receipt_id) for t in targets})),
    )
    runtime.dynamo.put_batch_summary_if_absent(summary)
    claims = EmbeddingClaims(runtime.dynamo)
    for target in targets:
        claims.confirm(target, holder)
    log(
        logger,
        logging.WARNING,
        "adopted a batch whose submitter did not record it",
        batch_id=holder,
        openai_batch_id=batch.id,
        requests=len(targets),
    )
