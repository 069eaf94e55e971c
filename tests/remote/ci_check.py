#!/usr/bin/env python3
"""Remote execution end to end within `.ci/run`'s budget (issue #11): the slim version of
check.py (which stays for manual runs after changing tools/buildenv/ or the build rules).

1. A local cluster with 2 workers (tools/buildenv/cluster/buildgrid.yml) builds the six handler
   images (linux/arm64) and runs two tests in a fresh output base with every action remote
   (`--noremote_accept_cached`; Bazel's process summary may count only `remote` and `internal`)
   while a worker is SIGKILLed mid-action: the build still succeeds, the supervisor restarts the
   worker, and the digests equal the local build's.
2. The cluster restarted with BuildGrid's CAS and action cache in moto's S3 behind its LRU tier
   (buildgrid-s3.yml), and the worker image (//tools/buildenv/worker:image) unpacked and its
   entrypoint started against it: that worker alone builds the base image and runs a test, with
   the local build's digest (worker_image.py). Everything it made is now in S3.
3. The cluster restarted again (an empty LRU tier) and a fresh output base: the same build runs
   0 actions, every result comes from S3.
4. The cluster stopped and no process left in the worker environment.

The S3 part builds the small base image, not the six images: moto's S3 on this 2-core machine
took 8 minutes for the six images' cold build (check.py --s3 does that).

    tests/remote/ci_check.py [--tmpdir DIR]

Exits 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import worker_image
from steps import (
    REMOTE_FLAGS,
    REPO,
    S3_CONFIG,
    CheckFailed,
    build_killing_a_worker,
    compare,
    e2e,
    image_digests,
    run_in_scratch,
    say,
    stop_cluster,
    tools_bazel,
    use_moto_for_buildgrid,
)

IMAGES = "//handlers/..."
# The six images among the targets //handlers/... builds (as tests/reproducibility/check.py).
IMAGE_TARGETS = 'kind("lambda_platform_image", //handlers/...)'
# py_test actions remotely: the S3 tier of the cache server against moto's S3 server (a real
# process on loopback) and the lock tool (python-debian). check.py runs the heavy chromadb ones.
TESTS = ["//tests/cache:s3_tier_test", "//tools/debian:lock_test"]
# The base image for this machine's CPU: a Debian root file system, its layer and the image.
BASE_IMAGE = "//base:python"


def start_cluster(config: Path | None = None) -> None:
    tools_bazel(
        "remote", "up", "--workers=2", *([f"--config={config}"] if config else [])
    )


def local_image_digests(scratch: Path) -> dict[str, str]:
    log = scratch / "local.log"
    run = e2e.run_bazel(REPO, ["build", "--color=no", IMAGES], log)
    if run.exit_code != 0:
        raise CheckFailed(f"the local build failed ({log}):\n{run.tail()}")
    return image_digests([], ["--color=no"], IMAGE_TARGETS, log)


def warm_build_from_s3(scratch: Path, buildenv: str) -> None:
    """The worker image's build again, in a fresh output base, through a restarted BuildGrid."""
    startup = [f"--output_base={scratch / 'output_base_warm'}"]
    flags = [flag for flag in REMOTE_FLAGS if flag != "--noremote_accept_cached"]
    log = scratch / "warm.log"
    with worker_image.remote_environment(buildenv):
        run = e2e.run_bazel(REPO, [*startup, "build", *flags, BASE_IMAGE], log)
    e2e.run_bazel(REPO, [*startup, "shutdown"], scratch / "shutdown.log")
    if run.exit_code != 0:
        raise CheckFailed(f"the warm build failed ({log}):\n{run.tail()}")
    kinds = run.processes
    if kinds.get("remote") or not kinds.get("remote cache hit"):
        raise CheckFailed(f"the warm build executed actions: {kinds} ({log})")
    say(
        f"warm build through a restarted BuildGrid: {kinds['remote cache hit']} results "
        f"from S3, 0 actions executed, {run.seconds:.0f} s"
    )


def run_checks(scratch: Path) -> None:
    timings = {}

    def timed(name: str, step, *args):
        started = time.monotonic()
        result = step(*args)
        timings[name] = time.monotonic() - started
        return result

    timed("cluster up (provisions the worker environment if needed)", start_cluster)
    local = timed("local build", local_image_digests, scratch)
    startup = [f"--output_base={scratch / 'output_base_cold'}"]
    timed(
        "six images and two tests remotely, a worker killed",
        build_killing_a_worker,
        startup,
        "test",
        [IMAGES, *TESTS],
        scratch / "cold.log",
    )
    remote = image_digests(startup, REMOTE_FLAGS, IMAGE_TARGETS, scratch / "cquery.log")
    compare(local, remote, "the six images (arm64)")
    e2e.run_bazel(REPO, [*startup, "shutdown"], scratch / "shutdown.log")
    tools_bazel("remote", "down")
    with e2e.Services(scratch) as services:
        use_moto_for_buildgrid(services)
        timed("cluster up, S3 behind the CAS", start_cluster, S3_CONFIG)
        buildenv = timed(
            "worker image: build, unpack, base image and a test on its worker",
            worker_image.check,
            scratch,
            [BASE_IMAGE],
            BASE_IMAGE,
            ["//tools/debian:lock_test"],
        )
        tools_bazel("remote", "down")
        timed("cluster restarted", start_cluster, S3_CONFIG)
        timed("warm build from S3", warm_build_from_s3, scratch, buildenv)
        timed("cluster stopped", stop_cluster)
    for name, seconds in timings.items():
        say(f"{seconds:6.0f} s  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tmpdir", default="/tmp")
    args = parser.parse_args()
    started = time.monotonic()

    def check(scratch: Path) -> None:
        run_checks(scratch)
        say(f"passed in {time.monotonic() - started:.0f} s")

    return run_in_scratch("remote-ci-check-", args.tmpdir, check)


if __name__ == "__main__":
    sys.exit(main())
