"""Validation shared by the pipeline's handlers: every event is checked fully before anything changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from receipt_dynamo import BatchType

from receipt_label.errors import InvalidInput


def event_object(event: Any, example: str) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidInput(
            f"the event must be a JSON object like {example}; got {type(event).__name__}"
        )
    return event


def required_string(event: dict[str, Any], name: str, example: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(
            f"the event needs a non-empty string {name!r}, as in {example}; got {value!r}"
        )
    return value


def batch_type_of(event: dict[str, Any]) -> BatchType:
    value = event.get("batch_type", BatchType.LINE_EMBEDDING.value)
    try:
        return BatchType(value)
    except ValueError:
        allowed = " or ".join(t.value for t in BatchType)
        raise InvalidInput(f"batch_type must be {allowed}; got {value!r}") from None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
