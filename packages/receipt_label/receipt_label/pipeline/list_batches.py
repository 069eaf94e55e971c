"""Step 3: list the batches still waiting for OpenAI."""

from __future__ import annotations

from typing import Any

from receipt_dynamo import BatchStatus

from receipt_label.errors import InvalidInput
from receipt_label.pipeline.events import batch_type_of, event_object
from receipt_label.runtime import Runtime

MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 500


LIST_EXAMPLE = '{"batch_type": "LINE_EMBEDDING", "limit": 100}'


def list_pending_batches(event: Any, runtime: Runtime) -> list[dict[str, str]]:
    event = event_object({} if event is None else event, LIST_EXAMPLE)
    batch_type = batch_type_of(event)
    limit = event.get("limit", DEFAULT_LIST_LIMIT)
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= MAX_LIST_LIMIT
    ):
        raise InvalidInput(
            f"limit must be an integer from 1 to {MAX_LIST_LIMIT}; got {limit!r}"
        )
    found: list[dict[str, str]] = []
    token = None
    while len(found) < limit:
        page = runtime.dynamo.list_batch_summaries(
            BatchStatus.PENDING, batch_type, limit=limit - len(found), next_token=token
        )
        found.extend(
            {"batch_id": s.batch_id, "openai_batch_id": s.openai_batch_id}
            for s in page.items
        )
        token = page.next_token
        if token is None:
            break
    return found[:limit]
