#!/usr/bin/env python3
"""Remote execution end to end (issue #11), on a local cluster that `tools/bazel remote up` starts.

    tests/remote/check.py        # 2 workers: the six images (arm64 and amd64) and a few tests
                                 # built remotely, a worker killed mid-build, digests compared
    tests/remote/check.py --s3   # BuildGrid's CAS and action cache in moto's S3: a cold build,
                                 # then a fresh server and output base build with 0 executed
    tests/remote/check.py --worker-image   # the six images (arm64) and the tests built by the
                                           # worker image's worker alone (worker_image.py)

The remote builds use a fresh output base with no disk cache and `--noremote_accept_cached`, so
every action runs on a worker; Bazel's process summary must count only `remote` (and `internal`,
which is not a process) spawns. The local digests come from this work tree's own output base.
It ends with the cluster stopped and no process left in the worker environment. Exits 0 when
everything holds, 1 otherwise. Runs Bazel itself, so it can not be a `bazel test`. `.ci/run`
runs the slimmer ci_check.py instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import worker_image
from steps import (
    REMOTE_FLAGS,
    REPO,
    S3_CONFIG,
    CheckFailed,
    build_killing_a_worker,
    e2e,
    remote_build,
    run_in_scratch,
    say,
    stop_cluster,
    tools_bazel,
    use_moto_for_buildgrid,
)


def load_reproducibility():
    spec = importlib.util.spec_from_file_location(
        "reproducibility_check", REPO / "tests" / "reproducibility" / "check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproducibility = load_reproducibility()
# Tests with moto's server and a real chromadb, and the launcher's own.
TESTS = [
    "//tests/handlers:compact_embeddings_test",
    "//packages/receipt_dynamo:client_test",
    "//tools/buildenv:launcher_test",
]


def images_and_tests(scratch: Path) -> None:
    local = reproducibility.image_outputs(REPO, [], [])
    startup = [f"--output_base={scratch / 'output_base'}"]
    build_killing_a_worker(
        startup, "build", reproducibility.TARGETS, scratch / "build.log"
    )
    remote = reproducibility.image_outputs(REPO, startup, REMOTE_FLAGS)
    different = [
        f"{key}: local {local[key]['digest'].read_text()} remote "
        f"{remote[key]['digest'].read_text() if key in remote else 'missing'}"
        for key in local
        if key not in remote
        or local[key]["digest"].read_bytes() != remote[key]["digest"].read_bytes()
    ]
    if different or len(local) != reproducibility.EXPECTED_IMAGES:
        raise CheckFailed(
            f"{len(local)} local images; remote digests differ: {different}"
        )
    say(
        f"all {len(local)} image digests (6 handlers x arm64, amd64) equal the local build's"
    )
    remote_build(startup, "test", TESTS, scratch / "test.log")


def s3_cache(scratch: Path) -> None:
    """A cold remote build fills S3; a restarted cluster (empty LRU tier) and a fresh output base
    then build the images with every action result from S3's action cache: 0 executed."""
    targets = ["//handlers/..."]
    with e2e.Services(scratch) as services:
        use_moto_for_buildgrid(services)
        for attempt, check in (("cold", "executed"), ("warm", "cached")):
            tools_bazel("remote", "up", "--workers=2", f"--config={S3_CONFIG}")
            startup = [f"--output_base={scratch / ('output_base_' + attempt)}"]
            flags = [
                flag for flag in REMOTE_FLAGS if flag != "--noremote_accept_cached"
            ]
            run = e2e.run_bazel(
                REPO, [*startup, "build", *flags, *targets], scratch / f"{attempt}.log"
            )
            e2e.run_bazel(REPO, [*startup, "shutdown"], scratch / "shutdown.log")
            tools_bazel("remote", "down")
            if run.exit_code != 0:
                errors = [line for line in run.output.splitlines() if "ERROR" in line]
                raise CheckFailed(
                    f"the {attempt} build failed ({run.log}):\n"
                    + "\n".join(errors[-10:])
                )
            kinds = run.processes
            say(f"{attempt} build: {kinds}")
            if check == "executed" and not kinds.get("remote"):
                raise CheckFailed(f"the cold build executed nothing remotely: {kinds}")
            if check == "cached" and (
                kinds.get("remote") or not kinds.get("remote cache hit")
            ):
                raise CheckFailed(f"the warm build executed actions: {kinds}")
    say("warm build from S3 through a restarted BuildGrid: 0 actions executed")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--s3", action="store_true", help="check BuildGrid's CAS on moto's S3 instead"
    )
    parser.add_argument(
        "--worker-image",
        action="store_true",
        help="build the six images (arm64) and the tests on the worker image's worker instead",
    )
    parser.add_argument("--tmpdir", default="/tmp")
    args = parser.parse_args()

    def check(scratch: Path) -> None:
        if args.s3:
            s3_cache(scratch)
        elif args.worker_image:
            tools_bazel("remote", "up", "--workers=1")
            worker_image.check(
                scratch,
                ["//handlers/..."],
                'kind("lambda_platform_image", //handlers/...)',
                TESTS,
            )
        else:
            tools_bazel("remote", "up", "--workers=2")
            images_and_tests(scratch)
        stop_cluster()

    return run_in_scratch("remote-check-", args.tmpdir, check)


if __name__ == "__main__":
    sys.exit(main())
