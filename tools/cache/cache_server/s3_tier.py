"""The bucket: <prefix>/ac/<hash> and <prefix>/cas/<hash>; every error becomes S3Unavailable."""

from __future__ import annotations

import contextlib
import logging
import os

from .circuit_breaker import CircuitBreaker
from .errors import CHUNK_SIZE, S3Unavailable
from .stats import Stats

log = logging.getLogger("s3cache")


class S3Store:
    """The bucket: <prefix>/ac/<hash> and <prefix>/cas/<hash>. Errors become S3Unavailable."""

    def __init__(self, args, breaker: CircuitBreaker, stats: Stats):
        import boto3
        import botocore.config
        from boto3.s3.transfer import TransferConfig

        self.bucket = args.bucket
        self.prefix = args.prefix.strip("/")
        self.breaker = breaker
        self._stats = stats
        config = botocore.config.Config(
            connect_timeout=args.s3_connect_timeout,
            read_timeout=args.s3_read_timeout,
            retries={
                "total_max_attempts": 1
            },  # the uploader retries; reads must fail fast
            max_pool_connections=64,
            s3={"addressing_style": "path"} if args.endpoint_url else None,
        )
        self._client = boto3.session.Session().client(
            "s3",
            region_name=args.region or None,
            endpoint_url=args.endpoint_url or None,
            config=config,
        )
        # Parts are read from the file on demand, so memory stays near concurrency * part size.
        self._transfer_config = TransferConfig(
            multipart_threshold=64 << 20,
            multipart_chunksize=16 << 20,
            max_concurrency=2,
        )

    def key(self, kind: str, digest: str) -> str:
        return f"{self.prefix}/{kind}/{digest}" if self.prefix else f"{kind}/{digest}"

    def _call(self, what: str, action):
        if not self.breaker.allow():
            raise S3Unavailable("circuit open", circuit_open=True)
        try:
            result = action()
        except Exception as error:  # noqa: BLE001 (whatever S3 does, the build goes on)
            if _is_not_found(error):
                self.breaker.record_success()
                return None
            self.breaker.record_failure()
            self._stats.add("s3_errors")
            # botocore messages name the bucket and key but never the credentials.
            log.warning("S3 %s failed: %s: %s", what, type(error).__name__, error)
            raise S3Unavailable(f"{what}: {error}") from None
        self.breaker.record_success()
        return result

    def fetch(self, kind: str, digest: str, sink) -> bool:
        """Streams the object into sink(chunk); False when there is no such object."""

        def download():
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.key(kind, digest)
            )
            with contextlib.closing(response["Body"]) as body:
                for chunk in body.iter_chunks(CHUNK_SIZE):
                    sink(chunk)
                    self._stats.add("s3_bytes_down", len(chunk))
            return True

        return bool(self._call(f"GET {self.key(kind, digest)}", download))

    def size(self, kind: str, digest: str) -> int | None:
        """The object's size, or None when there is no such object."""
        key = self.key(kind, digest)
        response = self._call(
            f"HEAD {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=key)
        )
        return None if response is None else int(response["ContentLength"])

    def upload(self, kind: str, digest: str, path: str) -> None:
        key = self.key(kind, digest)
        self._call(
            f"PUT {key}",
            lambda: self._client.upload_file(
                path, self.bucket, key, Config=self._transfer_config
            ),
        )
        self._stats.add("s3_bytes_up", os.path.getsize(path))

    def delete(self, kind: str, digest: str) -> None:
        key = self.key(kind, digest)
        self._call(
            f"DELETE {key}",
            lambda: self._client.delete_object(Bucket=self.bucket, Key=key),
        )


def _is_not_found(error: Exception) -> bool:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
