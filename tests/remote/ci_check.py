#!/usr/bin/env python3
"""Remote execution end to end within `.ci/run`'s budget (issue #11): the slim version of
check.py (which stays for manual runs after changing tools/buildenv/ or the build rules).

One local cluster with 2 workers, BuildGrid's CAS and action cache in moto's S3 behind its LRU
tier (tools/buildenv/cluster/buildgrid-s3.yml):

1. the six handler images (linux/arm64) and a few tests built in a fresh output base with every
   action remote (`--noremote_accept_cached`; Bazel's process summary may count only `remote`
   and `internal`), while a worker is SIGKILLed mid-action: the build still succeeds, the
   supervisor restarts the worker, and the digests equal the local build's;
2. the worker image (//tools/buildenv/worker:image) unpacked and its entrypoint started against
   the same BuildGrid: it alone builds the base image index (amd64 and arm64) and runs a test,
   with the local build's digests (worker_image.py);
3. the cluster restarted (an empty LRU tier) and a second fresh output base: the six images with
   0 actions executed, every result from S3;
4. the cluster stopped and no process left in the worker environment.

    tests/remote/ci_check.py [--tmpdir DIR]

Exits 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import worker_image
from steps import (
    REMOTE_FLAGS,
    REPO,
    STATE,
    CheckFailed,
    build_killing_a_worker,
    cluster,
    compare,
    e2e,
    image_digests,
    say,
    stop_cluster,
    tools_bazel,
)

IMAGES = "//handlers/..."
# A moto-backed test and a test of the lock tool (python-debian): py_test actions remotely.
TESTS = ["//packages/receipt_dynamo:client_test", "//tools/debian:lock_test"]
S3_CONFIG = REPO / "tools" / "buildenv" / "cluster" / "buildgrid-s3.yml"
ACTION_CACHE_BUCKET = "buildgrid-action-cache"


def start_cluster() -> None:
    tools_bazel("remote", "up", "--workers=2", f"--config={S3_CONFIG}")


def use_moto_for_buildgrid(services: e2e.Services) -> None:
    # The action cache needs a bucket of its own (see buildgrid-s3.yml); moto makes one on an
    # unsigned PUT.
    urllib.request.urlopen(
        urllib.request.Request(
            f"{services.endpoint_url}/{ACTION_CACHE_BUCKET}", method="PUT"
        ),
        timeout=60,
    ).close()
    os.environ.update(
        BUILDGRID_S3_ENDPOINT=services.endpoint_url,
        BUILDGRID_S3_BUCKET=e2e.BUCKET,
        BUILDGRID_S3_ACTION_CACHE_BUCKET=ACTION_CACHE_BUCKET,
    )


def local_image_digests(scratch: Path) -> dict[str, str]:
    log = scratch / "local.log"
    run = e2e.run_bazel(REPO, ["build", "--color=no", IMAGES], log)
    if run.exit_code != 0:
        raise CheckFailed(f"the local build failed ({log}):\n{run.tail()}")
    return image_digests([], ["--color=no"], IMAGES, log)


def warm_build_from_s3(scratch: Path) -> None:
    startup = [f"--output_base={scratch / 'output_base_warm'}"]
    flags = [flag for flag in REMOTE_FLAGS if flag != "--noremote_accept_cached"]
    log = scratch / "warm.log"
    run = e2e.run_bazel(REPO, [*startup, "build", *flags, IMAGES], log)
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

    with e2e.Services(scratch) as services:
        use_moto_for_buildgrid(services)
        timed("cluster up (provisions the worker environment if needed)", start_cluster)
        local = timed("local build", local_image_digests, scratch)
        startup = [f"--output_base={scratch / 'output_base_cold'}"]
        timed(
            "cold remote build and tests, a worker killed",
            build_killing_a_worker,
            startup,
            "test",
            [IMAGES, *TESTS],
            scratch / "cold.log",
        )
        remote = image_digests(startup, REMOTE_FLAGS, IMAGES, scratch / "cquery.log")
        compare(local, remote, "the six images (arm64)")
        e2e.run_bazel(REPO, [*startup, "shutdown"], scratch / "shutdown.log")
        timed(
            "worker image: build, unpack, base image index and a test on it",
            worker_image.check,
            scratch,
            ["//base:python_index"],
            "//base:python_index",
            ["//tools/debian:lock_test"],
        )
        tools_bazel("remote", "down")
        timed("cluster restarted", start_cluster)
        timed("warm build from S3", warm_build_from_s3, scratch)
        timed("cluster stopped", stop_cluster)
    for name, seconds in timings.items():
        say(f"{seconds:6.0f} s  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tmpdir", default="/tmp")
    args = parser.parse_args()
    if cluster.running_state(STATE):
        print(
            "remote check: a cluster already runs; stop it first (tools/bazel remote down)",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="remote-ci-check-", dir=args.tmpdir))
    try:
        run_checks(scratch)
        say(f"passed in {time.monotonic() - started:.0f} s")
        return 0
    except (CheckFailed, e2e.CheckFailed) as error:
        print(f"remote check: FAILED: {error}", file=sys.stderr)
        if cluster.running_state(STATE):
            subprocess.run(
                [str(REPO / "tools" / "bazel"), "remote", "down"], cwd=REPO, check=False
            )
        return 1
    finally:
        for base in scratch.glob("output_base*"):
            subprocess.run(
                [str(REPO / "tools" / "bazel"), f"--output_base={base}", "shutdown"],
                cwd=REPO,
                capture_output=True,
                check=False,
            )
        subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
