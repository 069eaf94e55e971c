"""The push tool's command line: options, their defaults and its help text."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Pushes OCI image layouts to a registry (Amazon ECR or any OCI registry): only what is missing, safely.

`bazel run //handlers/<name>:push` pushes one handler image, `bazel run //:push` all of
them; both run this tool with the images their Bazel targets built.
"""
ENV_REGISTRY = "PUSH_REGISTRY"
ENV_REPOSITORY_PREFIX = "PUSH_REPOSITORY_PREFIX"
DEFAULT_LOCAL_PORT = 5055
CONFIG_KEYS = {
    "registry": str,
    "registry_endpoint": str,
    "repository_prefix": str,
    "repositories": dict,
    "create_repositories": bool,
    "immutable_tags": bool,
    "jobs": int,
}

EPILOG = f"""\
where images go, first match wins:
  registry:    --registry, then ${ENV_REGISTRY}, then `registry` in the config file, else a
               local registry on 127.0.0.1:{DEFAULT_LOCAL_PORT} that this tool starts (Debian's
               docker-registry, storage in the Bazel cache directory) and leaves running.
  repository:  --repository, then `repositories.<image>` in the config file, else the
               repository prefix (--repository-prefix, ${ENV_REPOSITORY_PREFIX}, `repository_prefix`)
               followed by the oci_push target's `repository` (default: the image name).

auth:
  ECR registries (<account>.dkr.ecr.<region>.amazonaws.com) use boto3's
  get_authorization_token with the standard AWS credential chain and region; other
  registries use Docker's config.json (DOCKER_CONFIG, `docker login`/`skopeo login`
  credentials, credential helpers) or anonymous/token auth as the registry's
  WWW-Authenticate challenge asks.

tags:
  The manifest is pushed by digest first; tags follow only once the registry has it.
  Default tag: the git commit (40 hex digits) when the work tree has no uncommitted
  changes to tracked files; none otherwise. --tag replaces that default; --latest adds
  `latest`; the oci_push target's remote_tags are always added.

config file (TOML; keys: {", ".join(CONFIG_KEYS)}):
  registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
  repository_prefix = "receipts/"
  create_repositories = true

output:
  A table of image -> repository@digest with bytes uploaded, already present (skipped)
  and mounted (from another repository of the registry), and a JSON file for IaC tools:
  {{"images": {{"<image>": {{"reference": "<registry>/<repo>@sha256:...", "digest": ...,
  "repository": ..., "registry": ..., "tags": [...], "platform": ...}}}}}}
  Exit status: 0 all pushed, 1 a push failed, 2 bad usage or configuration.

examples:
  bazel run //:push -- --registry 123456789012.dkr.ecr.eu-west-1.amazonaws.com --create-repositories
  bazel run //handlers/submit_to_openai:push -- --dry-run
  {ENV_REGISTRY}=registry.example.com bazel run //:push -- --tag v1.2.0 --latest
"""


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="push",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    images = parser.add_argument_group("images (the Bazel target passes these)")
    images.add_argument(
        "--targets",
        type=Path,
        metavar="FILE",
        help="JSON list of {name, layout, repository, tags} written by oci_push",
    )
    images.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME=LAYOUT_DIR",
        help="an image to push, given as its OCI image layout directory (repeatable)",
    )
    images.add_argument(
        "--platform",
        metavar="OS/ARCH",
        help="the image to push when a layout holds several (e.g. linux/arm64); Lambda takes one architecture",
    )
    where = parser.add_argument_group("where to")
    where.add_argument(
        "--registry", help=f"HOST[:PORT] or http(s)://HOST[:PORT] (env {ENV_REGISTRY})"
    )
    where.add_argument(
        "--repository",
        action="append",
        default=[],
        metavar="[IMAGE=]REPO",
        help="repository for an image (repeatable); plain REPO when pushing one image",
    )
    where.add_argument(
        "--repository-prefix",
        metavar="PREFIX",
        help=f"prepended to each image's default repository (env {ENV_REPOSITORY_PREFIX})",
    )
    where.add_argument(
        "--registry-endpoint",
        metavar="URL",
        help="connect to this URL instead of the registry's own address (a proxy, a tunnel, a test "
        "server); auth and references still use --registry",
    )
    where.add_argument(
        "--plain-http",
        action="store_true",
        help="talk http:// to a registry that is not on loopback (default: https)",
    )
    where.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (the target passes the checked-in tools/push/push.toml)",
    )
    ecr_group = parser.add_argument_group("Amazon ECR")
    ecr_group.add_argument(
        "--create-repositories",
        action="store_true",
        default=None,
        help="create missing ECR repositories (scan on push enabled)",
    )
    ecr_group.add_argument(
        "--immutable-tags",
        action="store_true",
        default=None,
        help="with --create-repositories: create them with immutable tags",
    )
    tags = parser.add_argument_group("tags")
    tags.add_argument(
        "--tag",
        action="append",
        default=[],
        help="tag to set after the manifest is pushed (repeatable)",
    )
    tags.add_argument("--latest", action="store_true", help="also tag `latest`")
    behaviour = parser.add_argument_group("behaviour")
    behaviour.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be uploaded; upload nothing",
    )
    behaviour.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="images and blobs transferred at once (default 4)",
    )
    behaviour.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries of a failed request (5xx, 429, dropped connection), with backoff (default 5)",
    )
    behaviour.add_argument(
        "--chunk-size",
        type=int,
        default=16 << 20,
        metavar="BYTES",
        help="blobs up to this size go in one PUT, larger ones in PATCH chunks of this size "
        "(default 16 MiB; ECR needs at least 5 MiB)",
    )
    behaviour.add_argument(
        "--output-json",
        type=Path,
        metavar="FILE",
        help="where to write the image -> reference map (the target passes bazel-bin/<package>/<name>-references.json)",
    )
    behaviour.add_argument(
        "-v", "--verbose", action="store_true", help="log retries and each blob"
    )
    local = parser.add_argument_group(
        "embedded local registry (used when no registry is configured)"
    )
    local.add_argument(
        "--local-registry-dir",
        type=Path,
        metavar="DIR",
        help="its storage (default: oci-push-local-registry next to the Bazel output bases)",
    )
    local.add_argument(
        "--local-registry-port",
        type=int,
        metavar="PORT",
        default=DEFAULT_LOCAL_PORT,
        help=f"its port (default {DEFAULT_LOCAL_PORT}; 0 lets the system pick a free one, "
        "which later runs with port 0 reuse while that server runs)",
    )
    local.add_argument(
        "--stop-local-registry",
        action="store_true",
        help="stop the local registry this tool started, and exit",
    )
    return parser.parse_args(argv)
