"""What tools/bazel does around build, test, run and coverage: asks Bazel for its build event
file and, once Bazel is done, stores a summary row in the history and prints one line:
`N actions (M cached, K run) in T s, cache hit rate P%`.

launcher.py uses Recording. tools/bazel's fast path (sh) has Bazel write the file into the
history's pending directory itself, then runs this file with the file's path (main).
BUILD_METRICS=0 turns this off. A metrics problem never changes the command's exit status: it
prints one warning line. Standard library only: this runs on the host's python3 after every
build, so it imports no more than recording needs.
"""

import json
import os
import sys
import time
from pathlib import Path

WORK_TREE = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run by path from tools/bazel
    sys.path.insert(0, str(WORK_TREE))

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


def pending_stamp() -> str:
    """The name of this command's files in the pending directory, without suffix."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"


class Recording:
    """One recorded Bazel command: run `bazel_args` with `env`, then finish()."""

    def __init__(
        self,
        directory: Path,
        workspace: Path,
        events: Path,
        *,
        users_events: bool = False,
        bazel_args: list[str] | None = None,
    ):
        self.directory = directory
        self.workspace = workspace
        self.events = events
        # A file the user asked for is read, and left where they wanted it.
        self.users_events = users_events
        self.bazel_args = bazel_args or []
        self.push_file = directory / "pending" / f"{pending_stamp()}.push.json"

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
        users_events = users_event_file(argv[index + 1 :])
        if users_events:
            return cls(
                directory, workspace, users_events, users_events=True, bazel_args=argv
            )
        events = directory / "pending" / f"{pending_stamp()}.bep.json"
        bazel_args = list(argv)
        bazel_args.insert(index + 1, f"--build_event_json_file={events}")
        return cls(directory, workspace, events, bazel_args=bazel_args)

    @classmethod
    def of_events(cls, events: Path, workspace: Path) -> "Recording":
        """The recording of a command that has written `events`, a file in the history's
        pending directory (tools/bazel's fast path)."""
        return cls(events.parent.parent, workspace, events)

    @property
    def env(self) -> dict[str, str]:
        """What the command's environment needs on top of the user's: where `bazel run
        //:push` writes its numbers."""
        return {PUSH_FILE_VARIABLE: str(self.push_file)}

    def finish(self) -> None:
        """Records the finished command, or warns why not; removes the files it leaves."""
        try:
            self.record()
        except Exception as error:  # noqa: BLE001 - metrics must never fail the build
            warn(f"not recorded: {type(error).__name__}: {error}")
        finally:
            if not self.users_events:
                self.events.unlink(missing_ok=True)
            self.push_file.unlink(missing_ok=True)

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
    """HEAD's commit, or None outside a git work tree. Spawned with os.posix_spawnp: importing
    subprocess would cost more than the call, and this runs after every build."""
    read, write = os.pipe()
    try:
        pid = os.posix_spawnp(
            "git",
            ["git", "-C", str(workspace), "rev-parse", "HEAD"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, write, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except OSError:
        os.close(read)
        return None
    finally:
        os.close(write)
    with open(read, encoding="utf-8", errors="replace") as stdout:
        output = stdout.read().strip()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return output if status == 0 and output else None


def main(argv: list[str]) -> int:
    """`record.py EVENTS`: tools/bazel's fast path ran Bazel with --build_event_json_file=EVENTS,
    a file in the history's pending directory; records it as launcher.py would have."""
    if len(argv) != 1:
        print("usage: record.py BUILD_EVENTS_JSON_FILE", file=sys.stderr)
        return 2
    Recording.of_events(Path(argv[0]).absolute(), WORK_TREE).finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
