"""tools/bazel's fast path: it runs Bazel directly when launcher.py's fast-path file is valid, and
goes through launcher.py whenever anything that file depends on has changed.

Each test runs the real tools/bazel (sh) from a scratch work tree. "Bazel" is a script that
prints its arguments and working directory; "the server" is this test process (joining its own
mount namespace with nsenter is a no-op); the work tree's launcher.py is a stand-in that reports
the slow path, so a test sees which way tools/bazel went. A recorded command's "Bazel" copies a
real build event file to where it was asked to write one.
"""

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import fast_path
import launcher
import pytest

ENTRY = Path(launcher.__file__).resolve().parent.parent / "bazel"
RECORDER = ("record.py", "bep.py", "images.py", "store.py")
EVENTS = ENTRY.parent / "metrics" / "tests" / "testdata" / "incremental_build.bep.json"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    for name in fast_path.STAMP_FILES:
        source = ENTRY.parent.parent / name
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, workspace / name)
    (workspace / "tools" / "metrics").mkdir()
    for name in RECORDER:
        shutil.copy(
            ENTRY.parent / "metrics" / name, workspace / "tools" / "metrics" / name
        )
    (workspace / "pkg").mkdir()
    # The fixture's image outputs are on the machine that made it: point them nowhere.
    events = tmp_path / "events.json"
    events.write_text(
        re.sub(
            r"file://[^\"]*/manifest\.json",
            "file:///gone/manifest.json",
            EVENTS.read_text(),
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"  # the build environment's PATH
    bin_dir.mkdir()
    (bin_dir / "bazel").write_text(
        "#!/bin/sh\n"
        'echo "fast: $(pwd) $*"\n'
        'for arg; do case $arg in --build_event_json_file=*) cp "$EVENTS" "${arg#*=}" ;; esac; done\n'
        'exit "${STATUS:-0}"\n'
    )
    host_bin = tmp_path / "host-bin"  # the user's PATH
    host_bin.mkdir()
    (bin_dir / "bazel").chmod(0o755)
    (workspace / "tools" / "buildenv" / "launcher.py").write_text(
        'import sys\nprint("slow:", *sys.argv[1:])\n'
    )
    tools = (
        "sh",
        "md5sum",
        "cat",
        "env",
        "sed",
        "readlink",
        "nsenter",
        "pwd",
        "python3",
        "mkdir",
        "setpriv",
        "cp",
    )
    for tool in tools:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by tools/bazel and must be on PATH"
        for directory in (bin_dir, host_bin):
            if not (directory / tool).exists():
                (directory / tool).symlink_to(found)
    base = tmp_path / "output_base"
    (base / "server").mkdir(parents=True)
    (base / "server" / "server.pid.txt").write_text(str(os.getpid()))
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(launcher, "WORKSPACE", workspace)
    monkeypatch.setattr(launcher, "CHROOT_PATH", str(bin_dir))
    monkeypatch.setattr(Path, "home", lambda: home)
    root = Path(os.readlink("/proc/self/root"))
    launcher.write_fast_path(root, base, ["--output_user_root=/x y", "--bazelrc=/rc"])

    def run(*args, env=None, cwd=workspace, status=0, stderr=None):
        environment = {
            "PATH": str(host_bin),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(cache),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "EVENTS": str(events),
            **(env or {}),
        }
        result = subprocess.run(
            [workspace / "tools" / "bazel", *args],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == status, result.stderr
        if stderr is not None:
            assert result.stderr == stderr
        return result.stdout.strip()

    return workspace, base, tmp_path, run


def test_valid_fast_path_runs_bazel_directly_in_the_working_directory(setup):
    workspace, _, _, run = setup
    assert run("info", "server_pid") == (
        f"fast: {workspace} --output_user_root=/x y --bazelrc=/rc info server_pid"
    )
    assert run("query", "//...", cwd=workspace / "pkg").startswith(
        f"fast: {workspace}/pkg "
    )


@pytest.mark.parametrize("command", ["build", "test", "coverage"])
def test_builds_on_the_fast_path_record_their_metrics(setup, command):
    workspace, _, tmp_path, run = setup
    pending = tmp_path / "cache" / "receipt-lambdas" / "metrics" / "pending"
    out = run(
        command,
        "//...",
        env={"STATUS": "3"},
        status=3,
        stderr="3 actions (0 cached, 3 run) in 25.0 s, cache hit rate 0%\n",
    )
    assert re.fullmatch(
        f"fast: {workspace} --output_user_root=/x y --bazelrc=/rc {command} "
        f"--build_event_json_file={pending}/[0-9]+\\.bep\\.json //...",
        out,
    )
    history = sqlite3.connect(pending.parent / "history.sqlite3")
    assert history.execute("SELECT command, kind, success FROM builds").fetchall() == [
        ("build", "incremental", 1)  # what the fixture's build did
    ]
    assert list(pending.iterdir()) == [], "the events file is recorded, then removed"


def test_run_goes_through_the_launcher_unless_metrics_are_off(setup):
    workspace, _, _, run = setup
    assert run("run", "//:push").startswith("slow: "), (
        "the launcher collects push numbers"
    )
    for command in ("build", "test", "run", "coverage"):
        assert run(command, "//...", env={"BUILD_METRICS": "0"}, stderr="") == (
            f"fast: {workspace} --output_user_root=/x y --bazelrc=/rc {command} //..."
        )


def test_a_users_own_event_file_goes_through_the_launcher(setup):
    _, _, _, run = setup
    assert run("build", "--build_event_json_file=/tmp/mine.json", "//...").startswith(
        "slow: "
    )


@pytest.mark.parametrize(
    "name",
    [".bazelversion", "tools/buildenv/packages.txt", "tools/buildenv/launcher.py"],
)
def test_a_changed_stamp_file_goes_through_the_launcher(setup, name):
    workspace, _, _, run = setup
    with open(workspace / name, "a") as changed:
        changed.write("\n")
    assert run("info") == "slow: info"


def test_no_running_server_goes_through_the_launcher_quietly(setup):
    _, base, _, run = setup
    (base / "server" / "server.pid.txt").unlink()
    assert run("info", stderr="").startswith("slow: ")


def test_a_server_in_another_root_goes_through_the_launcher(setup, tmp_path):
    _, base, _, run = setup
    sleeper = subprocess.Popen(["sleep", "60"])  # a process whose root is not fast_root
    try:
        launcher.write_fast_path(tmp_path / "elsewhere", base, [])
        (base / "server" / "server.pid.txt").write_text(str(sleeper.pid))
        assert run("info").startswith("slow: ")
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def test_remote_cache_settings_go_through_the_launcher(setup):
    _, _, tmp_path, run = setup
    assert run("info", env={"BAZEL_CACHE_S3_BUCKET": "b"}).startswith("slow: ")
    config = tmp_path / "config" / "bazel-s3-cache" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("BAZEL_CACHE_S3_BUCKET=b\n")
    assert run("info").startswith("slow: ")


def test_startup_options_and_host_bazel_go_through_the_launcher(setup):
    _, _, _, run = setup
    assert run("--output_base=/o", "info").startswith("slow: ")
    assert run("--buildenv-info").startswith("slow: ")
    assert run("info", env={"BUILDENV_HOST_BAZEL": "/b"}).startswith("slow: ")


def test_a_new_user_bazelrc_goes_through_the_launcher(setup):
    _, _, tmp_path, run = setup
    (tmp_path / "home" / ".bazelrc").write_text("build --jobs=1\n")
    assert run("info").startswith("slow: ")
