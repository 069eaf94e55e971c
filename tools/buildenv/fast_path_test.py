"""tools/bazel's fast path: it runs Bazel directly when launcher.py's fast-path file is valid, and
goes through launcher.py whenever anything that file depends on has changed.

Each test runs the real tools/bazel (sh) from a scratch work tree. "Bazel" is a script that
prints its arguments and working directory; "the server" is this test process (joining its own
mount namespace with nsenter is a no-op); the work tree's launcher.py is a stand-in that reports
the slow path, so a test sees which way tools/bazel went.
"""

import os
import shutil
import subprocess
from pathlib import Path

import fast_path
import launcher
import pytest

ENTRY = Path(launcher.__file__).resolve().parent.parent / "bazel"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    for name in fast_path.STAMP_FILES:
        source = ENTRY.parent.parent / name
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, workspace / name)
    (workspace / "pkg").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"  # the build environment's PATH
    bin_dir.mkdir()
    (bin_dir / "bazel").write_text('#!/bin/sh\necho "fast: $(pwd) $*"\n')
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

    def run(*args, env=None, cwd=workspace):
        environment = {
            "PATH": str(host_bin),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(cache),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
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
        assert result.returncode == 0, result.stderr
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


def test_builds_take_the_fast_path_only_when_metrics_are_off(setup):
    workspace, _, _, run = setup
    for command in ("build", "test", "run", "coverage"):
        assert run(command, "//...").startswith("slow: "), (
            f"{command}: the launcher records its build metrics"
        )
        assert run(command, "//...", env={"BUILD_METRICS": "0"}) == (
            f"fast: {workspace} --output_user_root=/x y --bazelrc=/rc {command} //..."
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


def test_no_running_server_goes_through_the_launcher(setup):
    _, base, _, run = setup
    (base / "server" / "server.pid.txt").unlink()
    assert run("info").startswith("slow: ")


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
