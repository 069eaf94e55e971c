"""A small OCI distribution-spec (registry v2) client using only the standard library.

Standard library only so that a Bazel repository rule can run it with the build
environment's plain python3 at fetch time (tools/registry/pull.bzl); boto3 is
imported lazily, and only for ECR registries (tools/registry/ecr.py).

Covers what pushing and pulling images needs: anonymous, Basic and Bearer-token
auth (from the registry's WWW-Authenticate challenge), HEAD/GET/PUT of manifests
and blobs, blob uploads (monolithic PUT for small blobs, chunked PATCH with resume
for large ones, streamed from disk, digests verified), cross-repository mounts, and
retries with backoff for 5xx, 429 (honouring Retry-After) and dropped connections.
"""

from tools.registry.client.address import RegistryAddress, parse_registry
from tools.registry.client.credentials import (
    Credentials,
    CredentialSource,
    docker_credentials,
)
from tools.registry.client.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
)
from tools.registry.client.fetch import Fetch
from tools.registry.client.names import (
    ALL_MANIFEST_TYPES,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    check_digest,
    check_repository,
    check_tag,
    file_digest,
    sha256_digest,
)
from tools.registry.client.wire import Response
from tools.registry.client.write import Write


class Registry(Fetch, Write):
    """One registry: fetch and write over one transport. Thread-safe: each thread keeps its own
    connections."""


__all__ = [
    "ALL_MANIFEST_TYPES",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_MANIFEST_TYPES",
    "INDEX_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "AuthError",
    "CredentialSource",
    "Credentials",
    "DigestMismatchError",
    "NotFoundError",
    "Registry",
    "RegistryAddress",
    "RegistryError",
    "Response",
    "check_digest",
    "check_repository",
    "check_tag",
    "docker_credentials",
    "file_digest",
    "parse_registry",
    "sha256_digest",
]
