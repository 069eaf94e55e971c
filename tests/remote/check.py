#!/usr/bin/env python3
"""Remote execution end to end (issue #11), on a local cluster that `tools/bazel remote up` starts.

    tests/remote/check.py        # 2 workers: the six images (arm64 and amd64) and a few tests
                                 # built remotely, a worker killed mid-build, digests compared
    tests/remote/check.py --s3   # BuildGrid's CAS and action cache in moto's S3: a cold build,
                                 # then a fresh server and output base build with 0 executed

The remote builds use a fresh output base with no disk cache and `--noremote_accept_cached`, so
every action runs on a worker; Bazel's process summary must count only `remote` (and `internal`,
which is not a process) spawns. The local digests come from this work tree's own output base.
It ends with the cluster stopped and no process left in the worker environment. Exits 0 when
everything holds, 1 otherwise. Runs Bazel itself, so it can not be a `bazel test`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tools" / "buildenv"), str(REPO / "tools" / "cache")]

import e2e  # tools/cache/e2e.py: run_bazel, moto's S3
import launcher
from cluster import host as cluster


def load_reproducibility():
    spec = importlib.util.spec_from_file_location(
        "reproducibility_check", REPO / "tests" / "reproducibility" / "check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproducibility = load_reproducibility()
STATE = cluster.state_dir(launcher.cache_root())
REMOTE_FLAGS = [
    "--config=remote",
    "--disk_cache=",
    "--noremote_accept_cached",
    "--symlink_prefix=/",  # leave the convenience symlinks of the work tree alone
    "--color=no",
    "--curses=no",
]
# Tests with moto's server and a real chromadb, and the launcher's own.
TESTS = [
    "//tests/handlers:compact_embeddings_test",
    "//packages/receipt_dynamo:client_test",
    "//tools/buildenv:launcher_test",
]
SPAWNS_THAT_ARE_NOT_LOCAL = {"remote", "internal"}


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"remote check: {message}", flush=True)


def tools_bazel(*args: str) -> None:
    result = subprocess.run(
        [str(REPO / "tools" / "bazel"), *args], cwd=REPO, check=False
    )
    if result.returncode != 0:
        raise CheckFailed(
            f"`tools/bazel {' '.join(args)}` failed ({result.returncode})"
        )


def remote_build(
    startup: list[str], command: str, targets: list[str], log: Path
) -> e2e.BazelRun:
    """A build or test with every action on the cluster; fails unless it passed all remotely."""
    run = e2e.run_bazel(REPO, [*startup, command, *REMOTE_FLAGS, *targets], log)
    if run.exit_code != 0:
        raise CheckFailed(
            f"`bazel {command}` failed ({run.exit_code}; {log}):\n{run.tail()}"
        )
    kinds = run.processes
    local = {
        kind: n for kind, n in kinds.items() if kind not in SPAWNS_THAT_ARE_NOT_LOCAL
    }
    if local or not kinds.get("remote"):
        raise CheckFailed(
            f"`bazel {command}` ran spawns that were not remote: {kinds} ({log})"
        )
    say(
        f"{command}: {kinds['remote']} actions remote, none elsewhere, {run.seconds:.0f} s"
    )
    return run


class WorkerKiller(threading.Thread):
    """SIGKILLs the first worker seen running an action (BuildGrid's bots table says which)."""

    def __init__(self, state: dict, done: threading.Event):
        super().__init__(daemon=True)
        self.state, self.done = state, done
        self.killed: str | None = None

    def run(self) -> None:
        pids = {p["name"]: p["pid"] for p in self.state["processes"]}
        while not self.done.is_set():
            busy = [
                row[0]
                for row in cluster.query(self.state, cluster.BOTS_QUERY)
                if row[1:2] == ["busy"]
            ]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                self.killed = busy[0]
                say(f"killed {busy[0]} (pid {pids[busy[0]]}) while it ran an action")
                return
            self.done.wait(0.2)


def restarts(name: str) -> int:
    state = cluster.read_state(STATE)
    return next(p["restarts"] for p in state["processes"] if p["name"] == name)


def images_and_tests(scratch: Path) -> None:
    local = reproducibility.image_outputs(REPO, [], [])
    startup = [f"--output_base={scratch / 'output_base'}"]
    state = cluster.running_state(STATE)
    done = threading.Event()
    killer = WorkerKiller(state, done)
    killer.start()
    try:
        remote_build(startup, "build", reproducibility.TARGETS, scratch / "build.log")
    finally:
        done.set()
        killer.join(timeout=60)
    if killer.is_alive():
        raise CheckFailed("the worker-killing thread did not finish within 60 s")
    if killer.killed is None:
        raise CheckFailed("no worker was seen running an action during the build")
    if restarts(killer.killed) < 1:
        raise CheckFailed(
            f"{killer.killed} was killed but the supervisor did not restart it"
        )
    say(
        f"the build succeeded although {killer.killed} was killed; the supervisor restarted it"
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
        # The action cache needs a bucket of its own (see buildgrid-s3.yml); moto makes one on
        # an unsigned PUT.
        action_cache_bucket = "buildgrid-action-cache"
        urllib.request.urlopen(
            urllib.request.Request(
                f"{services.endpoint_url}/{action_cache_bucket}", method="PUT"
            ),
            timeout=60,
        ).close()
        os.environ.update(
            BUILDGRID_S3_ENDPOINT=services.endpoint_url,
            BUILDGRID_S3_BUCKET=e2e.BUCKET,
            BUILDGRID_S3_ACTION_CACHE_BUCKET=action_cache_bucket,
        )
        config = REPO / "tools" / "buildenv" / "cluster" / "buildgrid-s3.yml"
        for attempt, check in (("cold", "executed"), ("warm", "cached")):
            tools_bazel("remote", "up", "--workers=2", f"--config={config}")
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


def stop_cluster() -> None:
    state = cluster.read_state(STATE) or {}
    tools_bazel("remote", "down")
    left = cluster.processes_in(state.get("root", "")) if state.get("root") else []
    if left:
        raise CheckFailed(
            f"processes left in the worker environment after `remote down`: {left}"
        )
    say("cluster stopped, no process left in the worker environment")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--s3", action="store_true", help="check BuildGrid's CAS on moto's S3 instead"
    )
    parser.add_argument("--tmpdir", default="/tmp")
    args = parser.parse_args()
    if cluster.running_state(STATE):
        print(
            "remote check: a cluster already runs; stop it first (tools/bazel remote down)",
            file=sys.stderr,
        )
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="remote-check-", dir=args.tmpdir))
    try:
        if args.s3:
            s3_cache(scratch)
        else:
            tools_bazel("remote", "up", "--workers=2")
            images_and_tests(scratch)
        stop_cluster()
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
