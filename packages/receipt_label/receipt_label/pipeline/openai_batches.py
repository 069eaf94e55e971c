"""Creating an OpenAI batch at most once per batch id, and finding one created before a crash.

OpenAI's batch API has no idempotency key: a POST whose response was lost after OpenAI acted,
retried, creates a second batch that is billed too. So each creation attempt is a single
request (no client retries), and before trying again the batch is looked for by the
`metadata.batch_id` it was created with. The same lookup recovers a batch whose submitter
crashed before recording it.
"""

from __future__ import annotations

import logging
from typing import Any

import openai

from receipt_label.embedding_requests import ENDPOINT
from receipt_label.logs import get_logger, log

logger = get_logger("receipt_label.pipeline")

CREATE_ATTEMPTS = 4
# Listing stops at batches created this long before the submission began (clock skew allowance).
LOOKUP_SLACK_SECONDS = 600
LIST_PAGE_SIZE = 100
_RETRYABLE = (
    openai.APIConnectionError,
    openai.InternalServerError,
    openai.RateLimitError,
)


def find_batch(client: Any, batch_id: str, created_after: float) -> Any | None:
    """The newest batch whose metadata names `batch_id`, looking back to `created_after`."""
    cutoff = created_after - LOOKUP_SLACK_SECONDS
    for batch in client.batches.list(limit=LIST_PAGE_SIZE):  # newest first, all pages
        if batch.created_at < cutoff:
            return None
        if (batch.metadata or {}).get("batch_id") == batch_id:
            return batch
    return None


class CreationUnknown(RuntimeError):
    """A creation attempt failed and OpenAI could not be asked whether it created the batch."""


def create_batch_once(
    client: Any,
    *,
    input_file_id: str,
    metadata: dict[str, str],
    started_at: float,
    sleep: Any,
) -> Any:
    """Creates the batch; after a failed attempt, adopts the batch if OpenAI made it anyway.

    An openai.APIError out of here means OpenAI did not create the batch (it refused, or it
    failed every attempt and has no batch with this metadata); CreationUnknown means it may have.
    """
    single_attempt = client.with_options(max_retries=0)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            return single_attempt.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata=metadata,
            )
        except _RETRYABLE as error:
            log(
                logger,
                logging.WARNING,
                "batch creation failed; checking whether OpenAI created it anyway",
                batch_id=metadata["batch_id"],
                attempt=attempt,
                error=type(error).__name__,
            )
            failure = error
        try:
            existing = find_batch(client, metadata["batch_id"], started_at)
        except openai.APIError as error:
            raise CreationUnknown(
                f"creating the batch for {metadata['batch_id']} failed ({failure}) and "
                f"listing batches to check for it failed too ({error})"
            ) from error
        if existing is not None:
            log(
                logger,
                logging.INFO,
                "found the batch a failed attempt created",
                batch_id=metadata["batch_id"],
                openai_batch_id=existing.id,
            )
            return existing
        if attempt == CREATE_ATTEMPTS:
            raise failure
        sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
    raise AssertionError("unreachable: the last attempt returns or raises")
