"""Pushing images: blobs (present, mounted or uploaded, each once across images), then the
manifest by digest, and tags only when told to."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections import defaultdict

from tools.push.targets import Target
from tools.registry import client, layout


@dataclasses.dataclass
class Result:
    name: str
    repository: str
    image: layout.Image | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    uploaded: int = 0  # blob and manifest bytes the registry did not have
    skipped: int = 0  # blob bytes already in the repository
    mounted: int = 0  # blob bytes mounted from another repository of the registry
    uploaded_blobs: list[str] = dataclasses.field(default_factory=list)
    manifest_uploaded: bool = False
    tagged: bool = False  # `tags` point at the image (set only when every image pushed)
    seconds: float = 0.0
    error: str = ""


# --------------------------------------------------------------------------- pushing


class BlobLedger:
    """Which repository of the registry is known to hold each blob, plus one lock per blob,
    so images pushed concurrently upload a shared layer once and mount it everywhere else."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._holders: dict[str, str] = {}

    def lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks[digest]

    def holder(self, digest: str) -> str | None:
        with self._guard:
            return self._holders.get(digest)

    def record(self, digest: str, repository: str) -> None:
        with self._guard:
            self._holders.setdefault(digest, repository)


class Pusher:
    def __init__(
        self,
        registry: client.Registry,
        jobs: int,
        dry_run: bool,
        repositories: list[str],
        log,
    ):
        self.registry = registry
        self.dry_run = dry_run
        self.repositories = sorted(set(repositories))
        self.ledger = BlobLedger()
        self.blob_pool = concurrent.futures.ThreadPoolExecutor(
            jobs, thread_name_prefix="blob"
        )
        self.log = log

    def push_blob(self, repository: str, blob: layout.Blob) -> str:
        """Makes `repository` hold `blob`: 'present', 'mounted' or 'uploaded' (or what would happen)."""
        registry = self.registry
        if registry.blob_size(repository, blob.digest, "pull,push") is not None:
            self.ledger.record(blob.digest, repository)
            return "present"
        with self.ledger.lock(blob.digest):
            sources = [self.ledger.holder(blob.digest)]
            if sources[0] == repository:
                return "present"  # another image of the same repository just pushed it
            if sources[0] is None:
                sources = [other for other in self.repositories if other != repository]
                sources = [
                    other
                    for other in sources
                    if registry.blob_size(other, blob.digest) is not None
                ]
            if self.dry_run:
                return "mounted" if sources else "uploaded"
            location = None
            for source in sources[:1]:
                try:
                    location = registry.mount_blob(repository, blob.digest, source)
                except (client.AuthError, client.NotFoundError):
                    location = None  # no pull access to the source: upload instead
                else:
                    if location is None:
                        self.ledger.record(blob.digest, repository)
                        self.log(
                            f"mounted {blob.digest} from {source} into {repository}"
                        )
                        return "mounted"
            registry.upload_blob(
                repository, blob.digest, blob.path, blob.size, location
            )
            self.ledger.record(blob.digest, repository)
            self.log(f"uploaded {blob.digest} ({blob.size} bytes) to {repository}")
            return "uploaded"

    def push_image(self, target: Target, result: Result) -> None:
        image, repository = result.image, target.repository
        futures = {
            self.blob_pool.submit(self.push_blob, repository, blob): blob
            for blob in image.blobs
        }
        failures = []
        for future, blob in futures.items():
            try:
                outcome = future.result()
            except client.RegistryError as error:
                failures.append(
                    f"blob {blob.digest} ({blob.media_type}, {blob.path}): {error}"
                )
                continue
            if outcome == "present":
                result.skipped += blob.size
            elif outcome == "mounted":
                result.mounted += blob.size
            else:
                result.uploaded += blob.size
                result.uploaded_blobs.append(blob.digest)
        if failures:
            raise client.RegistryError("; ".join(failures))
        registry = self.registry
        if (
            registry.manifest_digest(repository, image.digest, "pull,push")
            != image.digest
        ):
            result.uploaded += len(image.manifest)
            result.manifest_uploaded = True
            if self.dry_run:
                return
            registry.put_manifest(
                repository, image.digest, image.manifest, image.media_type
            )
        if self.dry_run:
            return
        # Tags only ever point at a manifest the registry confirms it has.
        if (
            registry.manifest_digest(repository, image.digest, "pull,push")
            != image.digest
        ):
            raise client.RegistryError(
                f"{registry.name} accepted manifest {image.digest} of {repository} but does not serve it; "
                "no tag was set"
            )

    def tag_image(self, target: Target, result: Result) -> None:
        """Points `result.tags` at the image push_image() put in place."""
        image, repository, registry = result.image, target.repository, self.registry
        for tag in result.tags:
            if registry.manifest_digest(repository, tag, "pull,push") == image.digest:
                continue
            registry.put_manifest(repository, tag, image.manifest, image.media_type)
            result.uploaded += len(image.manifest)
        result.tagged = True
