"""`tools/bazel remote up|down|status` and the Bazel flags that send actions to a cluster.

A local cluster runs inside the worker environment (worker_env.py) in its own mount namespace:
supervisor.py starts PostgreSQL, BuildGrid and the workers there and records the server's address
in `<cache>/remote/state.json`; its logs are in `<cache>/remote/logs/`. `--config=remote` then
sends every action to it, or to the cluster BAZEL_REMOTE names (grpc://host:port).
"""

import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rootfs import LauncherError, progress

HERE = Path(__file__).resolve().parent
REMOTE_VARIABLE = "BAZEL_REMOTE"
# The `buildenv` property a BAZEL_REMOTE cluster's workers offer when they are not this work
# tree's build environment: the worker image's (//tools/buildenv/worker:buildenv).
BUILDENV_VARIABLE = "BAZEL_REMOTE_BUILDENV"
CONFIG_FLAG = "--config=remote"
SUPERVISOR_FILES = ("supervisor.py", "bgd_server.py", "buildgrid.yml")
START_TIMEOUT = (
    300  # seconds; PostgreSQL's first initdb and BuildGrid's start take about 10
)
STOP_TIMEOUT = 90
PASSED_VARIABLE_PREFIXES = ("BUILDGRID_", "AWS_")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def state_dir(cache_root: Path) -> Path:
    return cache_root / "remote"


def isa() -> str:
    """The ISA platform property of this machine, as workers and Bazel both name it."""
    machine = platform.machine()
    return {"x86_64": "x86-64", "amd64": "x86-64", "arm64": "aarch64"}.get(
        machine, machine
    )


def read_state(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "state.json").read_text())
    except (OSError, ValueError):
        return None


def process_root(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def running_state(directory: Path) -> dict | None:
    """The state of the cluster if its supervisor is alive (in the recorded root), else None."""
    state = read_state(directory)
    if (
        state
        and state.get("root")
        and process_root(state["supervisor_pid"]) == state["root"]
    ):
        return state
    return None


def processes_in(root: str) -> list[int]:
    """Every process whose root directory is `root`: what a stopped cluster must not leave."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and process_root(int(entry)) == root:
            found.append(int(entry))
    return found


def cluster_environment() -> dict[str, str]:
    """The cluster's environment: nothing of the host's (its PIP_*, SSL_* ... name host files)
    but the BUILDGRID_* and AWS_* variables a BuildGrid configuration may read (!expand-vars)."""
    passed = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(PASSED_VARIABLE_PREFIXES)
    }
    return {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root", **passed}


def start_script(root: Path, directory: Path, command: list[str]) -> str:
    """Shell commands for the cluster's mount namespace: /proc, /dev, /sys, the state directory at
    its own path, a private /tmp, then the supervisor in a chroot."""
    # Imported here: the launcher imports this module for bazelrc_lines on every command.
    from cluster import supervisor

    quoted_root = shlex.quote(str(root))
    lines = ["set -e"]
    for source in ("/proc", "/dev", "/sys"):
        lines.append(f"mount --rbind {source} {quoted_root}{source}")
    inside = shlex.quote(str(root) + str(directory))
    lines.append(
        f"mkdir -p {inside} && mount --bind {shlex.quote(str(directory))} {inside}"
    )
    # A private /tmp, and PostgreSQL's data and socket directories where the postgres user can
    # reach them (the state directory may be under a home directory only its owner can enter).
    mounts = (
        ("tmp", "/tmp"),
        ("postgres", str(supervisor.DATA_DIR)),
        ("run", str(supervisor.RUN_DIR)),
    )
    for source, target in mounts:
        lines.append(
            f"mkdir -p {quoted_root}{target} && "
            f"mount --bind {shlex.quote(str(directory / source))} {quoted_root}{target}"
        )
    for path in ("/etc/resolv.conf", "/etc/hosts"):
        if os.path.exists(path):
            lines.append(f"mount --bind {path} {quoted_root}{path}")
    lines.append(
        f"exec chroot {quoted_root} {' '.join(shlex.quote(a) for a in command)}"
    )
    return "\n".join(lines)


def up(
    cache_root: Path,
    worker_root: Path,
    buildenv: str,
    workers: int,
    config: Path | None,
) -> dict:
    """Starts the local cluster (or reports the one running) and returns its state."""
    directory = state_dir(cache_root)
    state = running_state(directory)
    if state:
        progress(
            f"a cluster already runs: {state['executor']} (`tools/bazel remote down` stops it)"
        )
        return state
    if os.geteuid() != 0:
        raise LauncherError(
            "the local cluster needs root (PostgreSQL runs as its own user inside the worker "
            "environment); run as root, or point BAZEL_REMOTE at a cluster"
        )
    if workers < 1:
        raise LauncherError(f"--workers must be at least 1, not {workers}")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    for name in ("tmp", "postgres", "run"):
        (directory / name).mkdir(exist_ok=True)
    (directory / "state.json").unlink(missing_ok=True)
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in SUPERVISOR_FILES:
        shutil.copyfile(HERE / name, bin_dir / name)
    if config is not None:
        shutil.copyfile(config, bin_dir / "buildgrid.yml")
    command = [
        "python3",
        str(bin_dir / "supervisor.py"),
        f"--state-dir={directory}",
        f"--workers={workers}",
        f"--buildenv={buildenv}",
        f"--isa={isa()}",
        f"--config={bin_dir / 'buildgrid.yml'}",
        f"--root={worker_root}",
    ]
    script = start_script(worker_root, directory, command)
    log_path = directory / "logs" / "supervisor.log"
    with open(log_path, "a") as log:
        # unshare and chroot exec, so this pid is the supervisor's; a new session so that it
        # outlives this command and its terminal.
        supervisor = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=cluster_environment(),
        )
    progress(
        f"starting PostgreSQL, BuildGrid and {workers} workers (logs: {directory / 'logs'})"
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        state = read_state(directory)
        if state and state["status"] == "running":
            break
        if supervisor.poll() is not None:
            raise LauncherError(
                f"the cluster did not start: {last_line(log_path)} (log: {log_path})"
            )
        if time.monotonic() > deadline:
            raise LauncherError(
                f"the cluster did not start within {START_TIMEOUT} s (log: {log_path})"
            )
        time.sleep(0.2)
    progress(f"cluster running: {state['executor']}; build with --config=remote")
    return state


def last_line(path: Path) -> str:
    lines = [
        line for line in path.read_text(errors="replace").splitlines() if line.strip()
    ]
    return lines[-1] if lines else "no output"


def down(cache_root: Path) -> None:
    """Stops the cluster and checks that none of its processes is left."""
    directory = state_dir(cache_root)
    state = read_state(directory)
    if not state or not state.get("root"):
        progress("no cluster runs")
        return
    pid, root = state["supervisor_pid"], state["root"]
    if process_root(pid) == root:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while process_root(pid) == root:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    left = processes_in(root)
    for leftover in left:
        os.kill(leftover, signal.SIGKILL)
    if left:
        raise LauncherError(
            f"the cluster did not stop within {STOP_TIMEOUT} s; killed what was left "
            f"(pids {', '.join(map(str, left))}); see {directory / 'logs'}"
        )
    progress("cluster stopped")


QUEUE_QUERY = (
    "SELECT CASE stage WHEN 2 THEN 'queued' WHEN 3 THEN 'executing' ELSE 'completed' END, "
    "count(*) FROM jobs GROUP BY 1 ORDER BY 1"
)
BOTS_QUERY = (
    "SELECT bot_id, CASE WHEN lease_id IS NULL THEN 'idle' ELSE 'busy' END, "
    "'session ' || name FROM bots ORDER BY bot_id"
)


def query(state: dict, sql: str) -> list[list[str]]:
    """Rows of a query to the cluster's PostgreSQL, run inside the cluster's namespace."""
    command = [
        "nsenter",
        f"--target={state['supervisor_pid']}",
        "--mount",
        "--root",
        "--wd",
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-h",
        state["sql_socket_dir"],
        "-d",
        "buildgrid",
        "-tAF",
        "\t",
        "-c",
        sql,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return [["(query failed: " + last_text(result.stderr) + ")"]]
    return [line.split("\t") for line in result.stdout.splitlines() if line]


def last_text(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def status(cache_root: Path) -> int:
    directory = state_dir(cache_root)
    state = running_state(directory)
    if not state:
        print(
            f"no cluster runs (`tools/bazel remote up` starts one; state: {directory})"
        )
        return 1
    print(f"executor: {state['executor']} (--config=remote uses it)")
    print(
        f"worker environment: {state['root']}; platform OSFamily=linux ISA={state['isa']} buildenv={state['buildenv']}"
    )
    print("processes:")
    for process in state["processes"]:
        pid = process["pid"] or "not running"
        print(
            f"  {process['name']}: pid {pid}, restarted {process['restarts']} times, log {process['log']}"
        )
    print("workers (BuildGrid bot sessions):")
    for row in query(state, BOTS_QUERY):
        print("  " + "  ".join(row))
    print("jobs (queue and completed; completed results are in the action cache):")
    for row in query(state, QUEUE_QUERY):
        print("  " + "  ".join(row))
    return 0


def asks_for_remote(argv: list[str]) -> bool:
    """Whether Bazel's arguments include `--config=remote` or `--config remote`."""
    pairs = itertools.pairwise(argv)
    return CONFIG_FLAG in argv or ("--config", "remote") in pairs


def bazelrc_lines(cache_root: Path, argv: list[str], buildenv: str) -> list[str]:
    """rc lines sending every action to the remote executor when `--config=remote` is given or
    BAZEL_REMOTE is set, else []. Actions ask for workers of `buildenv`, or of
    BAZEL_REMOTE_BUILDENV with BAZEL_REMOTE (Bazel refuses the property twice on its command
    line, so it can not be overridden there)."""
    executor = os.environ.get(REMOTE_VARIABLE)
    lines = []
    if executor:
        # BAZEL_REMOTE alone asks for remote execution; not twice, though: Bazel crashes on the
        # config's exec properties given twice ("Multiple entries with same key").
        if not asks_for_remote(argv):
            lines.append("build --config=remote")
        buildenv = os.environ.get(BUILDENV_VARIABLE) or buildenv
    elif asks_for_remote(argv):
        state = running_state(state_dir(cache_root))
        if not state:
            raise LauncherError(
                "--config=remote needs a cluster: start one with `tools/bazel remote up`, or set "
                "BAZEL_REMOTE=grpc://HOST:PORT to use your team's"
            )
        if state["buildenv"] != buildenv:
            raise LauncherError(
                f"the local cluster's workers run build environment {state['buildenv']}, this work "
                f"tree's is {buildenv}; restart it: `tools/bazel remote down && tools/bazel remote up`"
            )
        executor = state["executor"]
    else:
        return []
    return [
        *lines,
        f"build:remote --remote_executor={executor}",
        f"build:remote --remote_default_exec_properties=ISA={isa()}",
        f"build:remote --remote_default_exec_properties=buildenv={buildenv}",
    ]
