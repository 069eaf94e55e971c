"""Pushes OCI image layouts to a registry (Amazon ECR or any OCI registry): only what is missing, safely.

`bazel run //handlers/<name>:push` pushes one handler image, `bazel run //:push` all of
them; both run this tool with the images their Bazel targets built.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from pathlib import Path

from tools.registry import client, ecr, layout
from tools.registry.local_registry import LocalRegistry

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


@dataclasses.dataclass
class Target:
    name: str
    layout: Path
    repository: str = ""
    tags: tuple[str, ...] = ()


# Set by tools/bazel: where write_metrics puts this push's numbers.
METRICS_FILE_VARIABLE = "BUILD_METRICS_PUSH_FILE"


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
    seconds: float = 0.0
    error: str = ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="push",
        description=__doc__,
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
        help=f"its port (default {DEFAULT_LOCAL_PORT})",
    )
    local.add_argument(
        "--stop-local-registry",
        action="store_true",
        help="stop the local registry this tool started, and exit",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- configuration


def load_config(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None
    for key, value in config.items():
        if key not in CONFIG_KEYS:
            raise UsageError(
                f"config file {path}: unknown key {key!r}; known keys: {', '.join(CONFIG_KEYS)}"
            )
        if not isinstance(value, CONFIG_KEYS[key]):
            raise UsageError(
                f"config file {path}: {key} must be a {CONFIG_KEYS[key].__name__}"
            )
    return config


def user_path(path: Path) -> Path:
    """Relative paths on the command line are relative to where `bazel run` was started."""
    return Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / path


def runfiles_path(rlocation: str) -> Path:
    root = os.environ.get("RUNFILES_DIR")
    return Path(root) / rlocation if root else Path(rlocation)


def load_targets(args: argparse.Namespace) -> list[Target]:
    targets = []
    if args.targets:
        for entry in json.loads(args.targets.read_text()):
            targets.append(
                Target(
                    entry["name"],
                    runfiles_path(entry["layout"]),
                    entry.get("repository", ""),
                    tuple(entry.get("tags", ())),
                )
            )
    for spec in args.image:
        name, separator, path = spec.partition("=")
        if not separator or not name or not path:
            raise UsageError(f"--image {spec!r}: expected NAME=LAYOUT_DIR")
        targets.append(Target(name, user_path(Path(path))))
    if not targets:
        raise UsageError(
            "no images to push; run a Bazel push target or pass --image NAME=LAYOUT_DIR"
        )
    names = [target.name for target in targets]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"image name {', '.join(duplicates)} given more than once")
    return targets


def resolve_repositories(
    args: argparse.Namespace, config: dict, targets: list[Target]
) -> None:
    explicit: dict[str, str] = {}
    for spec in args.repository:
        name, separator, repository = spec.rpartition("=")
        if not separator:
            if len(targets) != 1:
                raise UsageError(
                    f"--repository {spec!r} without IMAGE= is ambiguous with {len(targets)} images; "
                    "use --repository IMAGE=REPO"
                )
            name, repository = targets[0].name, spec
        explicit[name] = repository
    unknown = sorted(set(explicit) - {target.name for target in targets})
    if unknown:
        raise UsageError(f"--repository names unknown image {', '.join(unknown)}")
    prefix = args.repository_prefix
    if prefix is None:
        prefix = os.environ.get(ENV_REPOSITORY_PREFIX) or config.get(
            "repository_prefix", ""
        )
    configured = config.get("repositories", {})
    for target in targets:
        repository = explicit.get(target.name) or configured.get(target.name)
        if not repository:
            repository = prefix + (target.repository or target.name)
        try:
            target.repository = client.check_repository(repository)
        except client.RegistryError as error:
            raise UsageError(f"image {target.name}: {error}") from None


def git_commit() -> tuple[str | None, str]:
    """The commit to tag with if the work tree is clean, and a note explaining when there is none."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")
    try:
        status = subprocess.run(
            ["git", "-C", workspace, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        commit = subprocess.run(
            ["git", "-C", workspace, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return (
            None,
            "no git commit to tag with (not a git checkout, or git is missing); pushed by digest only",
        )
    if status.strip():
        return (
            None,
            "the work tree has uncommitted changes, so no commit tag; pushed by digest only",
        )
    return commit, ""


def resolve_tags(
    args: argparse.Namespace, target: Target, default_tags: list[str]
) -> list[str]:
    tags = list(args.tag) if args.tag else list(default_tags)
    tags += list(target.tags)
    if args.latest:
        tags.append("latest")
    for tag in tags:
        client.check_tag(tag)
    return list(dict.fromkeys(tags))


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
        for tag in result.tags:
            if registry.manifest_digest(repository, tag, "pull,push") == image.digest:
                continue
            registry.put_manifest(repository, tag, image.manifest, image.media_type)
            result.uploaded += len(image.manifest)


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def reference(registry: client.Registry, result: Result) -> str:
    return (
        f"{registry.name}/{result.repository}@{result.image.digest}"
        if result.image
        else ""
    )


def print_table(
    registry: client.Registry, results: list[Result], dry_run: bool, out
) -> None:
    headers = [
        "IMAGE",
        "REFERENCE",
        "WOULD UPLOAD" if dry_run else "UPLOADED",
        "PRESENT",
        "MOUNTED",
        "TIME",
        "TAGS",
    ]
    rows = []
    for result in results:
        if result.error:
            rows.append(
                [
                    result.name,
                    f"FAILED ({result.repository})",
                    "",
                    "",
                    "",
                    f"{result.seconds:.1f}s",
                    "",
                ]
            )
            continue
        rows.append(
            [
                result.name,
                reference(registry, result),
                human_bytes(result.uploaded),
                human_bytes(result.skipped),
                human_bytes(result.mounted),
                f"{result.seconds:.1f}s",
                ",".join(result.tags) or "-",
            ]
        )
    widths = [
        max(len(str(row[column])) for row in [headers, *rows])
        for column in range(len(headers))
    ]
    for row in [headers, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip(),
            file=out,
        )


def write_references(
    path: Path, registry: client.Registry, results: list[Result]
) -> None:
    images = {}
    for result in results:
        if result.error or not result.image:
            continue
        images[result.name] = {
            "digest": result.image.digest,
            "platform": result.image.platform,
            "reference": reference(registry, result),
            "registry": registry.name,
            "repository": result.repository,
            "tags": result.tags,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(
        json.dumps({"images": images}, indent=2, sort_keys=True) + "\n"
    )
    os.replace(temporary, path)


def write_metrics(registry_name: str, results: list[Result], seconds: float) -> None:
    """The push's numbers for the build history, where tools/bazel asks for them
    (tools/metrics/record.py reads the file when `bazel run` ends)."""
    path = os.environ.get(METRICS_FILE_VARIABLE)
    if not path:
        return
    images = [
        {
            "name": r.name,
            "repository": r.repository,
            "uploaded": r.uploaded,
            "mounted": r.mounted,
            "skipped": r.skipped,
            "seconds": r.seconds,
            "error": r.error,
        }
        for r in results
    ]
    record = {
        "pushed_at": time.time(),
        "registry": registry_name,
        "seconds": seconds,
        "images": images,
    }
    try:
        Path(path).write_text(json.dumps(record) + "\n")
    except OSError as error:  # the push itself succeeded; only its metrics are lost
        print(
            f"note: push metrics not recorded: {path}: {error.strerror}",
            file=sys.stderr,
        )


def shown_path(path: Path) -> Path:
    """`path` as bazel-bin/... when it is under the workspace's bazel-bin, which reads better."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if workspace:
        bazel_bin = Path(workspace, "bazel-bin")
        try:
            return Path("bazel-bin") / path.resolve().relative_to(bazel_bin.resolve())
        except (OSError, ValueError):
            pass
    return path


def default_local_registry_dir() -> Path:
    # `bazel run` executes from <output_user_root>/<hash>/execroot/...: keep the storage beside the
    # output bases, where the Bazel cache lives, so `bazel clean --expunge` of one workspace keeps it.
    runfiles = os.environ.get("RUNFILES_DIR", "") or str(Path(sys.argv[0]).absolute())
    if "/execroot/" in runfiles:
        return Path(runfiles.split("/execroot/")[0]).parent / "oci-push-local-registry"
    cache = os.environ.get("XDG_CACHE_HOME") or str(
        Path(os.environ.get("HOME") or "/tmp") / ".cache"
    )
    return Path(cache) / "oci-push-local-registry"


def _run(argv: list[str], out, err) -> tuple[int, list[Result]]:
    started = time.monotonic()
    args = parse_args(argv)
    local = LocalRegistry(
        args.local_registry_dir or default_local_registry_dir(),
        args.local_registry_port,
    )
    if args.stop_local_registry:
        stopped = local.stop()
        print(
            f"local registry {'stopped' if stopped else 'was not running'} ({local.root})",
            file=out,
        )
        return 0, []
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.chunk_size < 64 << 10:
        raise UsageError("--chunk-size must be at least 65536 bytes")
    config = load_config(user_path(args.config) if args.config else None)
    targets = load_targets(args)
    resolve_repositories(args, config, targets)

    registry_name = (
        args.registry or os.environ.get(ENV_REGISTRY) or config.get("registry")
    )
    endpoint = args.registry_endpoint or (
        config.get("registry_endpoint") if not args.registry else None
    )
    if not registry_name:
        started_local = local.start(detach=True)
        registry_name = local.address
        print(
            f"No registry configured: pushing to the local registry at {local.url} "
            f"({'started now' if started_local else 'already running'}, storage {local.root}).\n"
            "To push to Amazon ECR instead: bazel run //:push -- --registry "
            "<account>.dkr.ecr.<region>.amazonaws.com --create-repositories\n"
            f"  (or set {ENV_REGISTRY}, or `registry` in tools/push/push.toml); "
            "stop the local registry with --stop-local-registry.",
            file=out,
        )
    address = client.parse_registry(
        registry_name, endpoint=endpoint, plain_http=args.plain_http or None
    )
    log = (
        (lambda message: print(message, file=err))
        if args.verbose
        else (lambda message: None)
    )

    ecr_host = ecr.parse_host(address.name)
    if ecr_host and args.chunk_size < 5 << 20:
        raise UsageError(
            "ECR takes upload chunks of at least 5 MiB; use --chunk-size 5242880 or more"
        )
    if ecr_host:
        create = (
            args.create_repositories
            if args.create_repositories is not None
            else config.get("create_repositories")
        )
        immutable = (
            args.immutable_tags
            if args.immutable_tags is not None
            else config.get("immutable_tags")
        )
        created = ecr.ensure_repositories(
            address.name,
            [t.repository for t in targets],
            bool(create),
            bool(immutable),
            args.dry_run,
        )
        for repository in created:
            print(
                f"{'would create' if args.dry_run else 'created'} ECR repository {repository}",
                file=out,
            )
        credentials = lambda: ecr.credentials(address.name)
    else:
        if args.create_repositories:
            print(
                f"note: --create-repositories only applies to ECR; {address.name} creates repositories on push",
                file=err,
            )
        credentials = lambda: client.docker_credentials(address.name)
    registry = client.Registry(
        address,
        credentials,
        retries=args.retries,
        monolithic_limit=args.chunk_size,
        chunk_size=args.chunk_size,
        log=log,
    )
    registry.ping()

    commit, note = git_commit() if not args.tag else (None, "")
    if note:
        print(f"note: {note}", file=out)
    default_tags = [commit] if commit else []

    results = [Result(target.name, target.repository) for target in targets]
    for target, result in zip(targets, results, strict=True):
        result.image = layout.read_image(target.layout, args.platform)
        result.tags = resolve_tags(args, target, default_tags)

    jobs = args.jobs or config.get("jobs") or 4
    pusher = Pusher(registry, jobs, args.dry_run, [t.repository for t in targets], log)

    def push_one(target: Target, result: Result) -> None:
        begin = time.monotonic()
        try:
            pusher.push_image(target, result)
        except OSError as error:
            result.error = f"cannot read the image layout: {error}"
        except client.RegistryError as error:
            result.error = str(error)
            if "NAME_UNKNOWN" in error.codes:
                result.error += (
                    f"; repository {target.repository} does not exist on {registry.name}: create it first "
                    "(--create-repositories does that on ECR)"
                )
        finally:
            result.seconds = time.monotonic() - begin

    with concurrent.futures.ThreadPoolExecutor(
        min(jobs, len(targets)), thread_name_prefix="image"
    ) as images:
        list(images.map(push_one, targets, results))
    pusher.blob_pool.shutdown()

    print_table(registry, results, args.dry_run, out)
    totals = [
        sum(getattr(result, field) for result in results)
        for field in ("uploaded", "mounted", "skipped")
    ]
    print(
        f"{'would upload' if args.dry_run else 'uploaded'} {human_bytes(totals[0])}, "
        f"mounted {human_bytes(totals[1])}, already present {human_bytes(totals[2])}, "
        f"in {time.monotonic() - started:.1f}s",
        file=out,
    )
    failed = [result for result in results if result.error]
    for result in failed:
        print(
            f"error: pushing image {result.name} to {registry.name}/{result.repository} failed: {result.error}",
            file=err,
        )
    if not args.dry_run:
        output = user_path(args.output_json) if args.output_json else None
        if output:
            write_references(output, registry, results)
            print(f"references: {shown_path(output)}", file=out)
        write_metrics(registry.name, results, time.monotonic() - started)
    return (1 if failed else 0), results


def run(argv: list[str], out=None, err=None) -> tuple[int, list[Result]]:
    """Pushes as `argv` says; returns the exit status and one Result per image."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        return _run(argv, out, err)
    except (UsageError, client.RegistryError) as error:
        print(f"push: error: {error}", file=err)
        return 2, []


def main() -> int:
    return run(sys.argv[1:])[0]


if __name__ == "__main__":
    sys.exit(main())
