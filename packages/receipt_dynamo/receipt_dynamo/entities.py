"""Typed items of the receipts table: keys, validation and conversion to and from DynamoDB items.

Items are plain dicts of str/int/float/bool/list/dict here; the client converts them to and
from DynamoDB's attribute-value format.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar


class EntityError(ValueError):
    """An entity or item failed validation; the message names the field and the fix."""


class EmbeddingStatus(str, Enum):
    NONE = "NONE"
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    NOISE = "NOISE"


class BatchStatus(str, Enum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class BatchType(str, Enum):
    LINE_EMBEDDING = "LINE_EMBEDDING"
    WORD_EMBEDDING = "WORD_EMBEDDING"


def _enum(enum_type: type[Enum], value: Any, name: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise EntityError(f"{name} must be one of {allowed}; got {value!r}") from None


def _image_id(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise EntityError(
            f"image_id must be a UUID such as {uuid.UUID(int=0)}; got {value!r}"
        ) from None


def _index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 99999:
        raise EntityError(f"{name} must be an integer from 1 to 99999; got {value!r}")
    return value


def _unit_float(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise EntityError(f"{name} must be a finite number; got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise EntityError(
            f"{name} must be between 0 and 1 (coordinates are normalized); got {value!r}"
        )
    return float(value)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise EntityError(f"{name} must be a string; got {type(value).__name__}")
    return value


def _required(item: dict[str, Any], name: str, kind: str) -> Any:
    if name not in item:
        raise EntityError(
            f"{kind} item {item.get('PK')!r}/{item.get('SK')!r} lacks attribute {name!r}"
        )
    return item[name]


def receipt_prefix(image_id: str, receipt_id: int) -> tuple[str, str]:
    """The PK and the SK prefix shared by everything that belongs to one receipt."""
    return f"IMAGE#{image_id}", f"RECEIPT#{receipt_id:05d}"


@dataclass(frozen=True)
class BoundingBox:
    x: float
    y: float
    width: float
    height: float

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            object.__setattr__(
                self, name, _unit_float(getattr(self, name), f"bounding_box.{name}")
            )

    def to_item(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}

    @classmethod
    def from_item(cls, value: Any) -> BoundingBox:
        if not isinstance(value, dict):
            raise EntityError(
                f"bounding_box must be a map with x, y, width, height; got {value!r}"
            )
        try:
            return cls(**{name: value[name] for name in ("x", "y", "width", "height")})
        except KeyError as missing:
            raise EntityError(f"bounding_box lacks {missing}") from None

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2


class _ReceiptText:
    """What ReceiptLine and ReceiptWord share: text, box, confidence, embedding status."""

    TYPE: ClassVar[str]

    def _validate_text_fields(self) -> None:
        object.__setattr__(self, "image_id", _image_id(self.image_id))
        _index(self.receipt_id, "receipt_id")
        _index(self.line_id, "line_id")
        _text(self.text, "text")
        if not isinstance(self.bounding_box, BoundingBox):
            raise EntityError("bounding_box must be a BoundingBox")
        object.__setattr__(
            self, "confidence", _unit_float(self.confidence, "confidence")
        )
        object.__setattr__(
            self,
            "embedding_status",
            _enum(EmbeddingStatus, self.embedding_status, "embedding_status"),
        )

    def to_item(self) -> dict[str, Any]:
        key = self.key
        return {
            **key,
            "TYPE": self.TYPE,
            "GSI1PK": f"EMBEDDING_STATUS#{self.embedding_status.value}",
            "GSI1SK": f"{self.TYPE}#{key['PK']}#{key['SK']}",
            "text": self.text,
            "bounding_box": self.bounding_box.to_item(),
            "confidence": self.confidence,
            "embedding_status": self.embedding_status.value,
        }

    @classmethod
    def _text_fields_from_item(cls, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "text": _required(item, "text", cls.TYPE),
            "bounding_box": BoundingBox.from_item(
                _required(item, "bounding_box", cls.TYPE)
            ),
            "confidence": _required(item, "confidence", cls.TYPE),
            "embedding_status": _required(item, "embedding_status", cls.TYPE),
        }


@dataclass(frozen=True)
class ReceiptLine(_ReceiptText):
    TYPE: ClassVar[str] = "RECEIPT_LINE"

    image_id: str
    receipt_id: int
    line_id: int
    text: str
    bounding_box: BoundingBox
    confidence: float
    embedding_status: EmbeddingStatus = EmbeddingStatus.NONE

    def __post_init__(self) -> None:
        self._validate_text_fields()

    @property
    def key(self) -> dict[str, str]:
        pk, sk = receipt_prefix(self.image_id, self.receipt_id)
        return {"PK": pk, "SK": f"{sk}#LINE#{self.line_id:05d}"}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ReceiptLine:
        image_id, receipt_id, line_id, _ = parse_receipt_sk(item, cls.TYPE)
        return cls(
            image_id=image_id,
            receipt_id=receipt_id,
            line_id=line_id,
            **cls._text_fields_from_item(item),
        )


@dataclass(frozen=True)
class ReceiptWord(_ReceiptText):
    TYPE: ClassVar[str] = "RECEIPT_WORD"

    image_id: str
    receipt_id: int
    line_id: int
    word_id: int
    text: str
    bounding_box: BoundingBox
    confidence: float
    embedding_status: EmbeddingStatus = EmbeddingStatus.NONE
    is_noise: bool = False

    def __post_init__(self) -> None:
        self._validate_text_fields()
        _index(self.word_id, "word_id")
        if not isinstance(self.is_noise, bool):
            raise EntityError(f"is_noise must be true or false; got {self.is_noise!r}")

    @property
    def key(self) -> dict[str, str]:
        pk, sk = receipt_prefix(self.image_id, self.receipt_id)
        return {"PK": pk, "SK": f"{sk}#LINE#{self.line_id:05d}#WORD#{self.word_id:05d}"}

    def to_item(self) -> dict[str, Any]:
        return {**super().to_item(), "is_noise": self.is_noise}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ReceiptWord:
        image_id, receipt_id, line_id, word_id = parse_receipt_sk(item, cls.TYPE)
        return cls(
            image_id=image_id,
            receipt_id=receipt_id,
            line_id=line_id,
            word_id=word_id,
            is_noise=bool(item.get("is_noise", False)),
            **cls._text_fields_from_item(item),
        )


_RECEIPT_SK = re.compile(r"^RECEIPT#(\d{5})#LINE#(\d{5})(?:#WORD#(\d{5}))?$")


def parse_receipt_sk(
    item: dict[str, Any], kind: str
) -> tuple[str, int, int, int | None]:
    pk, sk = item.get("PK", ""), item.get("SK", "")
    match = _RECEIPT_SK.match(sk)
    if not pk.startswith("IMAGE#") or not match:
        raise EntityError(f"{kind} item has unexpected key PK={pk!r} SK={sk!r}")
    word = match.group(3)
    return (
        pk.removeprefix("IMAGE#"),
        int(match.group(1)),
        int(match.group(2)),
        int(word) if word else None,
    )


@dataclass(frozen=True)
class ReceiptMetadata:
    TYPE: ClassVar[str] = "RECEIPT_METADATA"

    image_id: str
    receipt_id: int
    merchant_name: str = ""
    canonical_merchant_name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_id", _image_id(self.image_id))
        _index(self.receipt_id, "receipt_id")
        _text(self.merchant_name, "merchant_name")
        _text(self.canonical_merchant_name, "canonical_merchant_name")

    @property
    def best_merchant_name(self) -> str:
        return self.canonical_merchant_name or self.merchant_name

    @property
    def key(self) -> dict[str, str]:
        pk, sk = receipt_prefix(self.image_id, self.receipt_id)
        return {"PK": pk, "SK": f"{sk}#METADATA"}

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            **self.key,
            "TYPE": self.TYPE,
            "merchant_name": self.merchant_name,
            "canonical_merchant_name": self.canonical_merchant_name,
        }
        if self.best_merchant_name:
            # Receipts by merchant, for the team's merchant views.
            item["GSI3PK"] = f"MERCHANT#{self.best_merchant_name.upper()}"
            item["GSI3SK"] = f"{self.key['PK']}#{self.key['SK']}"
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ReceiptMetadata:
        match = re.match(r"^RECEIPT#(\d{5})#METADATA$", item.get("SK", ""))
        if not match:
            raise EntityError(f"{cls.TYPE} item has unexpected SK {item.get('SK')!r}")
        return cls(
            image_id=item.get("PK", "").removeprefix("IMAGE#"),
            receipt_id=int(match.group(1)),
            merchant_name=item.get("merchant_name", ""),
            canonical_merchant_name=item.get("canonical_merchant_name", ""),
        )


_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _batch_id(value: Any) -> str:
    if not isinstance(value, str) or not _BATCH_ID.match(value):
        raise EntityError(
            f"batch_id must be 1-128 letters, digits, '-' or '_'; got {value!r}"
        )
    return value


@dataclass(frozen=True)
class BatchSummary:
    TYPE: ClassVar[str] = "BATCH_SUMMARY"

    batch_id: str
    batch_type: BatchType
    openai_batch_id: str
    submitted_at: str
    status: BatchStatus = BatchStatus.PENDING
    result_file_id: str = ""
    receipt_refs: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _batch_id(self.batch_id)
        object.__setattr__(
            self, "batch_type", _enum(BatchType, self.batch_type, "batch_type")
        )
        object.__setattr__(self, "status", _enum(BatchStatus, self.status, "status"))
        if not isinstance(self.openai_batch_id, str) or not self.openai_batch_id:
            raise EntityError("openai_batch_id must be a non-empty string")
        _text(self.submitted_at, "submitted_at")
        refs = tuple(
            (_image_id(image_id), _index(int(receipt_id), "receipt_id"))
            for image_id, receipt_id in self.receipt_refs
        )
        object.__setattr__(self, "receipt_refs", refs)

    @property
    def key(self) -> dict[str, str]:
        return {"PK": f"BATCH#{self.batch_id}", "SK": "STATUS"}

    def to_item(self) -> dict[str, Any]:
        return {
            **self.key,
            "TYPE": self.TYPE,
            "GSI1PK": f"STATUS#{self.status.value}",
            "GSI1SK": f"BATCH_TYPE#{self.batch_type.value}#BATCH_ID#{self.batch_id}",
            "batch_type": self.batch_type.value,
            "openai_batch_id": self.openai_batch_id,
            "submitted_at": self.submitted_at,
            "status": self.status.value,
            "result_file_id": self.result_file_id,
            "receipt_refs": [
                [image_id, receipt_id] for image_id, receipt_id in self.receipt_refs
            ],
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> BatchSummary:
        return cls(
            batch_id=item.get("PK", "").removeprefix("BATCH#"),
            batch_type=_required(item, "batch_type", cls.TYPE),
            openai_batch_id=_required(item, "openai_batch_id", cls.TYPE),
            submitted_at=_required(item, "submitted_at", cls.TYPE),
            status=_required(item, "status", cls.TYPE),
            result_file_id=item.get("result_file_id", ""),
            receipt_refs=tuple(
                (ref[0], int(ref[1])) for ref in item.get("receipt_refs", [])
            ),
        )


@dataclass(frozen=True)
class EmbeddingBatchResult:
    TYPE: ClassVar[str] = "EMBEDDING_BATCH_RESULT"

    batch_id: str
    custom_id: str
    status: EmbeddingStatus
    error: str = ""

    def __post_init__(self) -> None:
        _batch_id(self.batch_id)
        parse_custom_id(self.custom_id)
        object.__setattr__(
            self, "status", _enum(EmbeddingStatus, self.status, "status")
        )

    @property
    def key(self) -> dict[str, str]:
        return {"PK": f"BATCH#{self.batch_id}", "SK": f"RESULT#{self.custom_id}"}

    def to_item(self) -> dict[str, Any]:
        return {
            **self.key,
            "TYPE": self.TYPE,
            "status": self.status.value,
            "error": self.error,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> EmbeddingBatchResult:
        return cls(
            batch_id=item.get("PK", "").removeprefix("BATCH#"),
            custom_id=item.get("SK", "").removeprefix("RESULT#"),
            status=_required(item, "status", cls.TYPE),
            error=item.get("error", ""),
        )


@dataclass(frozen=True)
class CompactionLock:
    TYPE: ClassVar[str] = "COMPACTION_LOCK"
    # DynamoDB's TTL sweep is lazy and only garbage-collects; `expires` is what decides ownership.
    TTL_GRACE_SECONDS: ClassVar[int] = 3600

    collection: str
    owner: str
    expires: float
    heartbeat: float

    @property
    def key(self) -> dict[str, str]:
        return lock_key(self.collection)

    def to_item(self) -> dict[str, Any]:
        return {
            **self.key,
            "TYPE": self.TYPE,
            "owner": self.owner,
            "expires": self.expires,
            "heartbeat": self.heartbeat,
            "TimeToLive": int(self.expires) + self.TTL_GRACE_SECONDS,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> CompactionLock:
        return cls(
            collection=item.get("PK", "").removeprefix("LOCK#"),
            owner=_required(item, "owner", cls.TYPE),
            expires=float(_required(item, "expires", cls.TYPE)),
            heartbeat=float(_required(item, "heartbeat", cls.TYPE)),
        )


def lock_key(collection: str) -> dict[str, str]:
    return {"PK": f"LOCK#{collection}", "SK": "LOCK"}


@dataclass(frozen=True)
class EmbeddingTarget:
    """What a custom_id names: one receipt line, or one word of it."""

    image_id: str
    receipt_id: int
    line_id: int
    word_id: int | None = None

    @property
    def custom_id(self) -> str:
        base = f"IMAGE#{self.image_id}#RECEIPT#{self.receipt_id:05d}#LINE#{self.line_id:05d}"
        return base if self.word_id is None else f"{base}#WORD#{self.word_id:05d}"

    @property
    def key(self) -> dict[str, str]:
        pk, sk = receipt_prefix(self.image_id, self.receipt_id)
        sk = f"{sk}#LINE#{self.line_id:05d}"
        return {
            "PK": pk,
            "SK": sk if self.word_id is None else f"{sk}#WORD#{self.word_id:05d}",
        }

    @property
    def is_word(self) -> bool:
        return self.word_id is not None


_CUSTOM_ID = re.compile(
    r"^IMAGE#([0-9a-fA-F-]{36})#RECEIPT#(\d{5})#LINE#(\d{5})(?:#WORD#(\d{5}))?$"
)
CUSTOM_ID_FORM = "IMAGE#<uuid>#RECEIPT#<5 digits>#LINE#<5 digits>[#WORD#<5 digits>]"


def parse_custom_id(custom_id: Any) -> EmbeddingTarget:
    match = _CUSTOM_ID.match(custom_id) if isinstance(custom_id, str) else None
    if not match:
        raise EntityError(
            f"custom_id {custom_id!r} is not of the form {CUSTOM_ID_FORM}"
        )
    word = match.group(4)
    return EmbeddingTarget(
        image_id=_image_id(match.group(1)),
        receipt_id=_index(int(match.group(2)), "receipt_id"),
        line_id=_index(int(match.group(3)), "line_id"),
        word_id=_index(int(word), "word_id") if word else None,
    )


def target_of(entity: ReceiptLine | ReceiptWord) -> EmbeddingTarget:
    return EmbeddingTarget(
        entity.image_id,
        entity.receipt_id,
        entity.line_id,
        getattr(entity, "word_id", None),
    )
