"""Writing to a registry: manifests, cross-repository mounts, blob uploads (monolithic or
chunked with resume, restarted when the registry loses the session)."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from pathlib import Path

from tools.registry.client.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryError,
)
from tools.registry.client.names import check_digest, file_digest, sha256_digest
from tools.registry.client.transport import Transport
from tools.registry.client.wire import (
    TRANSIENT_ERRORS,
    Response,
    _FileSlice,
    _HTTPStatusError,
)


class Write(Transport):
    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        digest = sha256_digest(body)
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository, "pull,push"),
            headers={"Content-Type": media_type},
            body=body,
            ok=(200, 201),
            what=f"putting manifest {reference} to {repository}",
        )
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise DigestMismatchError(
                f"{self.name} stored manifest {digest} of {repository} as {returned}"
            )
        return digest

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Cross-repository mount. Returns None when mounted, else an upload URL to use instead."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?{query}",
            scopes=self.scopes(repository, "pull,push", mount_from=source),
            ok=(201, 202),
            what=f"mounting blob {digest} from {source} into {repository}",
        )
        if response.status == 201:
            return None
        return self.url(response.headers["Location"])

    def start_upload(self, repository: str) -> tuple[str, int]:
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=self.scopes(repository, "pull,push"),
            ok=(202,),
            what=f"starting a blob upload to {repository}",
        )
        minimum = int(response.headers.get("OCI-Chunk-Min-Length") or 0)
        return self.url(response.headers["Location"]), minimum

    def upload_blob(
        self,
        repository: str,
        digest: str,
        path: Path,
        size: int,
        location: str | None = None,
    ) -> int:
        """Uploads the file at `path` as blob `digest`; returns the bytes sent by the attempt that succeeded.

        Small blobs go in one PUT. Large ones go in PATCH chunks; after a failed chunk the
        upload resumes from the offset the registry reports, or restarts when it cannot.
        """
        check_digest(digest)
        path = Path(path)
        actual_size = path.stat().st_size
        if actual_size != size:
            raise RegistryError(
                f"{path} has {actual_size} bytes but its descriptor says {size}; rebuild the image"
            )
        # Checked before sending anything so a corrupt layout never reaches the registry.
        if file_digest(path) != digest:
            raise DigestMismatchError(
                f"{path} does not hash to {digest}: the image layout is corrupt; rebuild it"
            )
        session = {"location": location, "minimum": 0, "resumable": False}

        def attempt() -> int:
            if not session["location"]:
                session["location"], session["minimum"] = self.start_upload(repository)
                session["resumable"] = False
            try:
                if size <= self.monolithic_limit:
                    return self._put_whole(
                        repository, digest, path, size, session["location"]
                    )
                return self._put_chunked(repository, digest, path, size, session)
            except (_HTTPStatusError, *TRANSIENT_ERRORS):
                if size <= self.monolithic_limit:
                    session["location"] = (
                        None  # a failed monolithic PUT leaves nothing worth resuming
                    )
                raise
            except NotFoundError:
                # The upload session expired or the registry cancelled it: start a new one.
                session["location"] = None
                raise ConnectionError(f"upload session for {digest} was lost") from None

        return self.retrying(
            f"uploading blob {digest} ({size} bytes) to {repository}", attempt
        )

    def _finish_url(self, location: str, digest: str) -> str:
        separator = "&" if "?" in location else "?"
        return location + separator + urllib.parse.urlencode({"digest": digest})

    def _put_whole(
        self, repository: str, digest: str, path: Path, size: int, location: str
    ) -> int:
        response = self.request(
            "PUT",
            self._finish_url(location, digest),
            scopes=self.scopes(repository, "pull,push"),
            headers={"Content-Type": "application/octet-stream"},
            body=lambda: _FileSlice(path, 0, size),
            content_length=size,
            ok=(201,),
            what=f"uploading blob {digest} to {repository}",
            retry=False,
        )
        self._check_stored(response, digest, repository)
        return size

    def _upload_offset(self, repository: str, location: str) -> int:
        response = self.request(
            "GET",
            location,
            scopes=self.scopes(repository, "pull,push"),
            ok=(204,),
            what=f"checking upload progress in {repository}",
            retry=False,
        )
        match = re.match(r"^(?:bytes=)?0-(\d+)$", response.headers.get("Range", ""))
        # distribution reports an empty upload as "0-0", which would otherwise read as one byte.
        return int(match.group(1)) + 1 if match and match.group(1) != "0" else 0

    def _put_chunked(
        self, repository: str, digest: str, path: Path, size: int, session: dict
    ) -> int:
        scopes = self.scopes(repository, "pull,push")
        offset = (
            self._upload_offset(repository, session["location"])
            if session["resumable"]
            else 0
        )
        session["resumable"] = True
        chunk = max(self.chunk_size, session["minimum"])
        sent = 0
        while offset < size:
            length = min(chunk, size - offset)
            response = self.request(
                "PATCH",
                session["location"],
                scopes=scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + length - 1}",
                },
                body=lambda start=offset, count=length: _FileSlice(path, start, count),
                content_length=length,
                ok=(202,),
                what=f"uploading bytes {offset}-{offset + length - 1} of blob {digest} to {repository}",
                retry=False,
            )
            session["location"] = self.url(
                response.headers.get("Location") or session["location"]
            )
            offset += length
            sent += length
        response = self.request(
            "PUT",
            self._finish_url(session["location"], digest),
            scopes=scopes,
            ok=(201,),
            what=f"committing blob {digest} to {repository}",
            retry=False,
        )
        self._check_stored(response, digest, repository)
        return sent

    def _check_stored(self, response: Response, digest: str, repository: str) -> None:
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(
                f"{self.name} stored blob {digest} of {repository} as {stored}"
            )
