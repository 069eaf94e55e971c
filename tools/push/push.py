"""Pushes OCI image layouts to a registry (Amazon ECR or any OCI registry): only what is missing, safely.

`bazel run //handlers/<name>:push` pushes one handler image, `bazel run //:push` all of
them; both run this tool with the images their Bazel targets built.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import sys
import time
from pathlib import Path

from tools.push.options import ENV_REGISTRY, UsageError, parse_args
from tools.push.pusher import Pusher, Result
from tools.push.report import (
    human_bytes,
    print_table,
    shown_path,
    write_metrics,
    write_references,
)
from tools.push.targets import (
    Target,
    git_commit,
    load_config,
    load_targets,
    resolve_repositories,
    resolve_tags,
    user_path,
)
from tools.registry import client, ecr, layout
from tools.registry.local_registry import LocalRegistry

__all__ = ["Result", "Target", "UsageError", "human_bytes", "main", "run"]


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

    def attempt(step, target: Target, result: Result) -> None:
        begin = time.monotonic()
        try:
            step(target, result)
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
            result.seconds += time.monotonic() - begin

    with concurrent.futures.ThreadPoolExecutor(
        min(jobs, len(targets)), thread_name_prefix="image"
    ) as images:
        list(
            images.map(functools.partial(attempt, pusher.push_image), targets, results)
        )
        # Tags move only once every image is in place by digest: a failed image leaves every
        # tag where it was, never a release tag on some images and not on others.
        untagged = [result.name for result in results if result.error]
        if not untagged and not args.dry_run:
            list(
                images.map(
                    functools.partial(attempt, pusher.tag_image), targets, results
                )
            )
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
    if untagged and any(result.tags for result in results):
        pushed = [result.name for result in results if not result.error]
        print(
            f"error: {len(untagged)} of {len(results)} images failed ({', '.join(untagged)}), so no tag "
            "was set or moved on any image"
            + (
                f"; {', '.join(pushed)} are in the registry by digest (see the table)"
                if pushed
                else ""
            )
            + ". Fix the failure and push again: what is already there is not uploaded again.",
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
