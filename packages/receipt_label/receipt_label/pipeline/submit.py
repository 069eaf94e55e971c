"""Step 2: send one request file to OpenAI as a batch, exactly once, each line at most once.

The lines are claimed in DynamoDB before OpenAI is called (see receipt_dynamo.claims), the
batch is created without blind retries (see openai_batches), and a batch created by a
submitter that crashed before recording it is adopted rather than submitted again (see
recovery).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import openai
from botocore.exceptions import ClientError
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    EmbeddingClaims,
    EmbeddingStatus,
    parse_custom_id,
)

from receipt_label.embedding_requests import parse_ndjson, to_ndjson
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log
from receipt_label.pipeline.events import event_object, now_iso, required_string
from receipt_label.pipeline.openai_batches import create_batch_once
from receipt_label.pipeline.recovery import adopt_if_created, unfinished_holders
from receipt_label.runtime import Runtime

logger = get_logger("receipt_label.pipeline")

# Stable namespace: a batch id is derived from its request file, so a redelivered submit is idempotent.
BATCH_ID_NAMESPACE = uuid.UUID("0b7f3c9e-5d1a-4e8b-9a52-3f1c2d4e6a70")


SUBMIT_EXAMPLE = '{"s3_bucket": "...", "s3_key": "embedding-requests/line/<image>/<receipt>/<run>.ndjson"}'


def submit_batch(event: Any, runtime: Runtime) -> dict[str, Any]:
    """Uploads one request file to OpenAI as a batch and records it; a repeated call returns the same batch."""
    event = event_object(event, SUBMIT_EXAMPLE)
    bucket = required_string(event, "s3_bucket", SUBMIT_EXAMPLE)
    key = required_string(event, "s3_key", SUBMIT_EXAMPLE)
    if bucket != runtime.config.batch_bucket:
        raise InvalidInput(
            f"s3_bucket {bucket!r} is not this pipeline's batch bucket {runtime.config.batch_bucket!r}"
        )
    source = f"s3://{bucket}/{key}"
    try:
        data = runtime.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise InvalidInput(
                f"{source} does not exist; pass an s3_key returned by find_unembedded_lines"
            ) from None
        raise
    batch_type, requests = parse_ndjson(data, source)
    batch_id = str(uuid.uuid5(BATCH_ID_NAMESPACE, source))
    dynamo = runtime.dynamo

    existing = dynamo.get_batch_summary(batch_id)
    if existing is not None:
        log(
            logger,
            logging.INFO,
            "already submitted",
            batch_id=batch_id,
            openai_batch_id=existing.openai_batch_id,
        )
        return {
            "batch_id": batch_id,
            "openai_batch_id": existing.openai_batch_id,
            "submitted": 0,
        }

    client = runtime.openai
    claims = EmbeddingClaims(dynamo)
    lease = runtime.config.submit_claim_lease_seconds
    now = runtime.clock()
    targets = {r.custom_id: parse_custom_id(r.custom_id) for r in requests}
    states = claims.states(targets.values())

    # Submissions of these lines that never recorded their batch (this file's own, redelivered
    # after a crash, or another file's whose claim expired) may have a batch at OpenAI already.
    adopted = set()
    for holder, began in sorted(
        unfinished_holders(states, batch_id, now, lease).items()
    ):
        if adopt_if_created(runtime, holder, began) is not None:
            adopted.add(holder)
    if batch_id in adopted:
        return {
            "batch_id": batch_id,
            "openai_batch_id": dynamo.get_batch_summary(batch_id).openai_batch_id,
            "submitted": 0,
        }

    # Claim before calling OpenAI: a line claimed by another live submission is left out.
    expires = now + lease
    claimed = []
    for request in requests:
        state = states.get(request.custom_id)
        if state is None:
            continue
        if state.status is EmbeddingStatus.NONE:
            holder = None
        elif state.expired(now) and state.claim_batch_id not in adopted:
            holder = state.claim_batch_id
        else:
            continue
        if claims.claim(
            targets[request.custom_id],
            batch_id,
            expires,
            now=now,
            expired_holder=holder,
        ):
            claimed.append(request)
    if not claimed:
        log(
            logger,
            logging.INFO,
            "nothing left to submit",
            source=source,
            requests=len(requests),
        )
        return {"batch_id": None, "openai_batch_id": None, "submitted": 0}

    def release_claims() -> None:
        for request in claimed:
            claims.release(targets[request.custom_id], batch_id)

    try:
        uploaded = client.files.create(
            file=(f"{batch_id}.jsonl", to_ndjson(claimed), "application/jsonl"),
            purpose="batch",
        )
    except BaseException:
        release_claims()
        raise
    if runtime.clock() >= expires:
        release_claims()
        raise RuntimeError(
            f"the claims on {source} expired before its batch was created; "
            "SUBMIT_CLAIM_LEASE_SECONDS must exceed the function's timeout"
        )
    try:
        batch = create_batch_once(
            client,
            input_file_id=uploaded.id,
            metadata={"batch_id": batch_id, "batch_type": batch_type.value},
            started_at=now,
            sleep=runtime.sleep,
        )
    except openai.APIError:
        release_claims()  # OpenAI refused, or failed and has no such batch
        raise
    # Any other failure (a crash, CreationUnknown) leaves the claims to expire: OpenAI may have
    # the batch, and whoever next finds these lines looks it up before sending them again.
    refs = sorted(
        {
            (targets[r.custom_id].image_id, targets[r.custom_id].receipt_id)
            for r in claimed
        }
    )
    summary = BatchSummary(
        batch_id=batch_id,
        batch_type=batch_type,
        openai_batch_id=batch.id,
        submitted_at=now_iso(),
        status=BatchStatus.PENDING,
        receipt_refs=tuple(refs),
    )
    if not dynamo.put_batch_summary_if_absent(summary):
        winner = dynamo.get_batch_summary(batch_id)
        if winner is not None and winner.openai_batch_id != batch.id:
            client.batches.cancel(batch.id)
            release_claims()
            log(
                logger,
                logging.WARNING,
                "lost a submit race; cancelled duplicate",
                batch_id=batch_id,
                cancelled=batch.id,
            )
        return {
            "batch_id": batch_id,
            "openai_batch_id": winner.openai_batch_id if winner else None,
            "submitted": 0,
        }
    for request in claimed:
        claims.confirm(targets[request.custom_id], batch_id)
    log(
        logger,
        logging.INFO,
        "submitted",
        batch_id=batch_id,
        openai_batch_id=batch.id,
        batch_type=batch_type.value,
        requests=len(claimed),
    )
    return {
        "batch_id": batch_id,
        "openai_batch_id": batch.id,
        "submitted": len(claimed),
    }
