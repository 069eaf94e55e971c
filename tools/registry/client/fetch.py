"""Reading from a registry: blob and manifest existence, manifests, tags, blobs (verified)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tools.registry.client.errors import DigestMismatchError
from tools.registry.client.names import (
    ALL_MANIFEST_TYPES,
    STREAM_BLOCK,
    check_digest,
    sha256_digest,
)
from tools.registry.client.transport import Transport


class Fetch(Transport):
    def blob_size(
        self, repository: str, digest: str, actions: str = "pull"
    ) -> int | None:
        """The blob's size if `repository` has it, else None."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scopes=self.scopes(repository, actions),
            ok=(200, 404),
            what=f"checking blob {digest} in {repository}",
        )
        if response.status == 404:
            return None
        return int(response.headers.get("Content-Length") or 0)

    def manifest_digest(
        self, repository: str, reference: str, actions: str = "pull"
    ) -> str | None:
        """The digest `reference` (a tag or digest) resolves to in `repository`, or None."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository, actions),
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            ok=(200, 404),
            what=f"checking manifest {reference} in {repository}",
        )
        if response.status == 404:
            return None
        return response.headers.get("Docker-Content-Digest") or (
            reference if reference.startswith("sha256:") else None
        )

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """Returns (bytes, media type, digest); verifies the digest when `reference` is one."""
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository),
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            what=f"fetching manifest {reference} of {repository}",
        )
        digest = sha256_digest(response.body)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatchError(
                f"manifest {repository}@{reference} from {self.name} has digest {digest}"
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in ALL_MANIFEST_TYPES:
            media_type = json.loads(response.body).get("mediaType", media_type)
        return response.body, media_type, digest

    def list_tags(self, repository: str) -> list[str]:
        response = self.request(
            "GET", f"/v2/{repository}/tags/list", scopes=self.scopes(repository)
        )
        return json.loads(response.body).get("tags") or []

    def fetch_blob(
        self, repository: str, digest: str, destination: Path, size: int | None = None
    ) -> int:
        """Downloads a blob to `destination` (atomically), verifying its sha256 and size."""
        check_digest(digest)
        destination = Path(destination)
        temporary = destination.with_name(destination.name + ".partial")

        def consume(response) -> None:
            hasher, written = hashlib.sha256(), 0
            with open(temporary, "wb") as out:
                while block := response.read(STREAM_BLOCK):
                    hasher.update(block)
                    out.write(block)
                    written += len(block)
            if size is not None and written < size:
                raise ConnectionError(
                    f"blob {digest} ended after {written} of {size} bytes"
                )
            if "sha256:" + hasher.hexdigest() != digest or (
                size is not None and written != size
            ):
                temporary.unlink()
                raise DigestMismatchError(
                    f"blob {digest} of {repository} from {self.name} arrived as sha256:{hasher.hexdigest()} "
                    f"({written} bytes); refusing it"
                )

        self.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scopes=self.scopes(repository),
            stream_to=consume,
            what=f"fetching blob {digest} of {repository}",
        )
        os.replace(temporary, destination)
        return destination.stat().st_size
