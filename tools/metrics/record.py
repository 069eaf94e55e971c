"""What tools/bazel does around build, test, run and coverage: asks Bazel for its build event
file, runs it, stores a summary row in the history and prints one line:
`N actions (M cached, K run) in T s, cache hit rate P%`.

BUILD_METRICS=0 turns this off. A metrics problem never changes the command's exit status: it
prints one warning line. Standard library only: this runs on the host's python3.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.metrics import bep, images, store

RECORDED_COMMANDS = ("build", "test", "run", "coverage")
OPT_OUT_VARIABLE = "BUILD_METRICS"
# `bazel run //:push` writes its numbers here (tools/push/report.py write_metrics), for the history.
PUSH_FILE_VARIABLE = "BUILD_METRICS_PUSH_FILE"
LAST_EVENTS = "last-build-events.json"


def warn(message: str) -> None:
    print(f"build metrics: {message}", file=sys.stderr, flush=True)


def command_index(argv: list[str]) -> int | None:
    """Where the Bazel command is in `argv` (startup options come before it)."""
    for index, arg in enumerate(argv):
        if not arg.startswith("-"):
            return index if arg in RECORDED_COMMANDS else None
    return None


def users_event_file(options: list[str]) -> Path | None:
    """The --build_event_json_file the user gave, if any (before a `--` that starts `run`'s
    arguments)."""
    found = None
    for index, option in enumerate(options):
        if option == "--":
            break
        if option.startswith("--build_event_json_file="):
            found = option.split("=", 1)[1]
        elif option == "--build_event_json_file" and index + 1 < len(options):
            found = options[index + 1]
    return Path(found).absolute() if found else None


class Recording:
    """One recorded Bazel command: `bazel_args` to run, then run() it."""

    def __init__(self, argv: list[str], index: int, directory: Path, workspace: Path):
        self.directory = directory
        self.workspace = workspace
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.push_file = directory / "pending" / f"{stamp}.push.json"
        # A file the user asked for is read, and left where they wanted it.
        self.users_events = users_event_file(argv[index + 1 :])
        self.events = self.users_events or directory / "pending" / f"{stamp}.bep.json"
        self.bazel_args = list(argv)
        if not self.users_events:
            self.bazel_args.insert(index + 1, f"--build_event_json_file={self.events}")

    @classmethod
    def start(cls, argv: list[str], workspace: Path) -> "Recording | None":
        """A Recording when `argv` is a recorded command and metrics are on, else None."""
        if os.environ.get(OPT_OUT_VARIABLE) == "0":
            return None
        index = command_index(argv)
        if index is None:
            return None
        directory = store.default_dir()
        try:
            (directory / "pending").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            warn(f"not recorded: cannot create {directory}: {error.strerror}")
            return None
        return cls(argv, index, directory, workspace)

    def run(self, command: list[str], env: dict[str, str]) -> int:
        """Runs `command` (which must pass `bazel_args` to Bazel) and records it; returns its
        exit status."""
        env = {**env, PUSH_FILE_VARIABLE: str(self.push_file)}
        status = run_as_if_executed(command, env)
        try:
            self.record()
        except Exception as error:  # noqa: BLE001 - metrics must never fail the build
            warn(f"not recorded: {type(error).__name__}: {error}")
        finally:
            if not self.users_events:
                self.events.unlink(missing_ok=True)
            self.push_file.unlink(missing_ok=True)
        return status

    def record(self) -> None:
        if not self.events.exists():
            warn(
                "not recorded: Bazel wrote no build events (it stopped before building)"
            )
            return
        summary = bep.parse(self.events)
        if not self.users_events:
            self.events.replace(self.directory / LAST_EVENTS)
        # Outputs Bazel left in a remote cache (--remote_download_minimal) are not on disk.
        built = [
            images.read_image(i.label, i.manifest)
            for i in summary.images
            if i.manifest.exists()
        ]
        connection = store.connect(self.directory / "history.sqlite3")
        try:
            build_id = store.add_build(
                connection, summary, git_commit(self.workspace), built
            )
            if self.push_file.exists():
                add_push_file(connection, self.push_file, build_id)
        finally:
            connection.close()
        print(summary.summary_line(), file=sys.stderr, flush=True)


def run_as_if_executed(command: list[str], env: dict[str, str]) -> int:
    """Runs `command` as a child that behaves as if tools/bazel had exec'd it: SIGTERM and
    SIGHUP sent to us reach it, so does SIGINT unless the terminal already sent it to our whole
    process group (Ctrl-C), and it gets SIGTERM if we die (callers such as tools/cache/e2e.py
    stop a `tools/bazel run` server by signalling the pid they started). Returns its exit
    status, 128 + N when signal N ended it, as a shell would report."""
    # The launcher has one thread, so preexec_fn is safe here.
    child = subprocess.Popen(command, env=env, preexec_fn=_terminate_with_parent)  # noqa: PLW1509

    def forward(signum, _frame):
        if signum != signal.SIGINT or not _in_terminal_foreground():
            child.send_signal(signum)

    forwarded = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {signum: signal.signal(signum, forward) for signum in forwarded}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - status if status < 0 else status


def _terminate_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGTERM): survives the exec chain unshare/nsenter -> sh -> chroot
    # -> bazel (-> the `bazel run` program), which keeps one pid.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _in_terminal_foreground() -> bool:
    try:
        with open("/dev/tty", "rb") as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False


def add_push_file(connection, path: Path, build_id: int | None) -> int:
    """Stores the numbers tools/push wrote to `path` (see tools/push/report.py write_metrics)."""
    data = json.loads(path.read_text())
    return store.add_push(
        connection,
        pushed_at=data["pushed_at"],
        registry=data["registry"],
        seconds=data["seconds"],
        images=[
            store.PushedImage(
                name=image["name"],
                repository=image["repository"],
                uploaded_bytes=image["uploaded"],
                mounted_bytes=image["mounted"],
                skipped_bytes=image["skipped"],
                seconds=image["seconds"],
                error=image.get("error", ""),
            )
            for image in data["images"]
        ],
        build_id=build_id,
    )


def git_commit(workspace: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(workspace), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
