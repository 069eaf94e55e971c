"""Media types, what valid digests, repositories and tags look like, and digests of data."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tools.registry.client.errors import RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ALL_MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + INDEX_TYPES

USER_AGENT = "oci-registry-client/1 (python)"
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
# Repository path components per the distribution spec.
REPOSITORY_PATTERN = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
HOSTNAME_PATTERN = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
STREAM_BLOCK = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST_PATTERN.match(digest or ""):
        raise RegistryError(
            f"{digest!r} is not a sha256 digest (expected 'sha256:' and 64 lowercase hex digits)"
        )
    return digest


def check_repository(repository: str) -> str:
    if not REPOSITORY_PATTERN.match(repository or ""):
        raise RegistryError(
            f"{repository!r} is not a valid repository name: use lowercase letters, digits and separators "
            "('.', '_', '-', '/'), e.g. 'team/receipt-upload'"
        )
    return repository


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag or ""):
        raise RegistryError(
            f"{tag!r} is not a valid tag: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(STREAM_BLOCK):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()
