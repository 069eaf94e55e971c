"""Steps the remote-execution checks share (check.py, ci_check.py, worker_image.py): Bazel runs
that must be all remote, killing a busy worker, stopping the cluster, image digests."""

from __future__ import annotations

import json
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

STATE = cluster.state_dir(launcher.cache_root())
REMOTE_FLAGS = [
    "--config=remote",
    "--disk_cache=",
    "--noremote_accept_cached",
    "--symlink_prefix=/",  # leave the convenience symlinks of the work tree alone
    "--color=no",
    "--curses=no",
]
SPAWNS_THAT_ARE_NOT_LOCAL = {"remote", "internal"}
# BuildGrid with its CAS and action cache in S3 (the LRU tier in front is empty after a restart).
S3_CONFIG = REPO / "tools" / "buildenv" / "cluster" / "buildgrid-s3.yml"
ACTION_CACHE_BUCKET = "buildgrid-action-cache"


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
    startup: list[str],
    command: str,
    targets: list[str],
    log: Path,
    flags: list[str] = REMOTE_FLAGS,
) -> e2e.BazelRun:
    """A build or test with every action on the cluster; fails unless it passed all remotely."""
    run = e2e.run_bazel(REPO, [*startup, command, *flags, *targets], log)
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


def output_files(
    startup: list[str], flags: list[str], expression: str, log: Path
) -> list[Path]:
    """The output files of the targets `expression` names, in the output base `startup` picks."""
    info = e2e.run_bazel(REPO, [*startup, "info", *flags, "execution_root"], log)
    listing = e2e.run_bazel(
        REPO, [*startup, "cquery", *flags, "--output=files", expression], log
    )
    if info.exit_code or listing.exit_code:
        raise CheckFailed(f"`bazel info` or `cquery` failed ({log})")
    execroot = Path(info.output.strip().splitlines()[-1])
    return [
        execroot / line
        for line in listing.output.splitlines()
        if line.startswith("bazel-out/")
    ]


def image_digests(
    startup: list[str], flags: list[str], expression: str, log: Path
) -> dict[str, str]:
    """{"<handler> <architecture>": digest} of the images among the targets' outputs."""
    digests = {}
    for path in output_files(startup, flags, expression, log):
        if path.name != "digest":
            continue
        config = path.parent / "config.json"
        what = path.parent.name
        if what == "image_any_platform":  # //handlers/<name>:image
            what = path.parent.parent.name
        if config.exists():
            what += " " + json.loads(config.read_text())["architecture"]
        digests[what] = path.read_text().strip()
    if not digests:
        raise CheckFailed(f"no image digest among the outputs of {expression} ({log})")
    return digests


def compare(local: dict[str, str], remote: dict[str, str], what: str) -> None:
    different = {
        key: (local[key], remote.get(key))
        for key in local
        if local[key] != remote.get(key)
    }
    if different or local.keys() != remote.keys():
        raise CheckFailed(
            f"{what}: remote digests differ from the local build's: {different} "
            f"(local {sorted(local)}, remote {sorted(remote)})"
        )
    say(f"{what}: all {len(local)} digests equal the local build's")


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
                if row[1:2] == ["busy"] and row[0] in pids
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


def build_killing_a_worker(
    startup: list[str], command: str, targets: list[str], log: Path
) -> e2e.BazelRun:
    """A remote build during which a busy worker is SIGKILLed; it must still succeed and the
    supervisor must restart the worker."""
    state = cluster.running_state(STATE)
    done = threading.Event()
    killer = WorkerKiller(state, done)
    killer.start()
    try:
        run = remote_build(startup, command, targets, log)
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
    return run


def stop_cluster() -> None:
    state = cluster.read_state(STATE) or {}
    tools_bazel("remote", "down")
    left = cluster.processes_in(state.get("root", "")) if state.get("root") else []
    if left:
        raise CheckFailed(
            f"processes left in the worker environment after `remote down`: {left}"
        )
    say("cluster stopped, no process left in the worker environment")


def use_moto_for_buildgrid(services: e2e.Services) -> None:
    """Points S3_CONFIG's variables at moto's server, with the buckets it needs."""
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


def cluster_already_running() -> bool:
    """True, saying so, when a cluster runs: a check starts and stops its own."""
    if not cluster.running_state(STATE):
        return False
    print(
        "remote check: a cluster already runs; stop it first (tools/bazel remote down)",
        file=sys.stderr,
    )
    return True


def run_in_scratch(prefix: str, tmpdir: str, check) -> int:
    """Runs `check(scratch)` in a new directory under `tmpdir`, unless a cluster already runs:
    0 when it passes, 1 (saying why) when it fails; clean_up() in any case."""
    if cluster_already_running():
        return 1
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    try:
        check(scratch)
        return 0
    except (CheckFailed, e2e.CheckFailed) as error:
        print(f"remote check: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        clean_up(scratch)


def clean_up(scratch: Path) -> None:
    """Stops a cluster a failed check left running, the Bazel servers of the scratch output
    bases, and removes the scratch directory."""
    if cluster.running_state(STATE):
        subprocess.run(
            [str(REPO / "tools" / "bazel"), "remote", "down"], cwd=REPO, check=False
        )
    for base in scratch.glob("output_base*"):
        subprocess.run(
            [str(REPO / "tools" / "bazel"), f"--output_base={base}", "shutdown"],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
    subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False)
    shutil.rmtree(scratch, ignore_errors=True)
