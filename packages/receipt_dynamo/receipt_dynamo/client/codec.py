"""Items between Python and DynamoDB's attribute values, and page tokens for callers."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from receipt_dynamo.entities import EntityError

T = TypeVar("T")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo_value(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dynamo_value(v) for v in value]
    return value


def _from_dynamo_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo_value(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_from_dynamo_value(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo_value(v)) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _from_dynamo_value(_deserializer.deserialize(v)) for k, v in item.items()
    }


def encode_page_token(last_evaluated_key: dict[str, Any] | None) -> str | None:
    if not last_evaluated_key:
        return None
    return base64.urlsafe_b64encode(
        json.dumps(last_evaluated_key, sort_keys=True).encode()
    ).decode()


def decode_page_token(token: str | None) -> dict[str, Any] | None:
    if token is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise EntityError(
            f"page token {token!r} is not one this API returned; pass back next_token unchanged"
        ) from None
    if not isinstance(key, dict):
        raise EntityError(
            f"page token {token!r} is not one this API returned; pass back next_token unchanged"
        )
    return key


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str | None
