"""The latest-pointer: which snapshot is current, moved only by a conditional write.

The pointer is read together with its ETag at the start of a compaction and rewritten with
`IfMatch` on that ETag (or `IfNoneMatch="*"` when there was none), so a compactor whose view
is stale (its lock expired while its write stalled) cannot move the pointer back: S3 rejects
the write and the compactor reports that it lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from receipt_label.compaction.layout import pointer_key

_MISSING = ("NoSuchKey", "404")
# 412: the ETag no longer matches (or the key now exists); 409: a concurrent conditional write won.
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class PointerMoved(RuntimeError):
    """Someone else moved the pointer since this compaction read it."""


@dataclass(frozen=True)
class Pointer:
    stamp: str | None
    etag: str | None


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def read_pointer_version(s3: Any, bucket: str, collection: str) -> Pointer:
    try:
        response = s3.get_object(Bucket=bucket, Key=pointer_key(collection))
    except ClientError as error:
        if _error_code(error) in _MISSING:
            return Pointer(None, None)
        raise
    stamp = response["Body"].read().decode().strip() or None
    return Pointer(stamp, response["ETag"])


def read_pointer(s3: Any, bucket: str, collection: str) -> str | None:
    return read_pointer_version(s3, bucket, collection).stamp


def move_pointer(
    s3: Any, bucket: str, collection: str, expected: Pointer, stamp: str
) -> Pointer:
    """Points at `stamp` if the pointer is still `expected`; PointerMoved if it is not."""
    condition = (
        {"IfMatch": expected.etag}
        if expected.etag is not None
        else {"IfNoneMatch": "*"}
    )
    try:
        response = s3.put_object(
            Bucket=bucket,
            Key=pointer_key(collection),
            Body=stamp.encode() + b"\n",
            ContentType="text/plain",
            **condition,
        )
    except ClientError as error:
        if _error_code(error) not in _CONDITION_FAILED + _MISSING:
            raise
        # A retried PUT whose first attempt landed fails its own condition: that is a win.
        now = read_pointer_version(s3, bucket, collection)
        if now.stamp == stamp:
            return now
        raise PointerMoved(
            f"s3://{bucket}/{pointer_key(collection)} moved from {expected.stamp!r} to "
            f"{now.stamp!r} while snapshot {stamp} was being made"
        ) from None
    return Pointer(stamp, response["ETag"])
