"""The Bazel flags --config=remote gets, the cluster's start script and its process bookkeeping."""

import json
import os
import sys
from pathlib import Path

import pytest
from cluster import host, supervisor
from rootfs import LauncherError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv(host.REMOTE_VARIABLE, raising=False)
    return tmp_path


def write_state(cache: Path, **fields) -> None:
    directory = host.state_dir(cache)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "status": "running",
        "supervisor_pid": os.getpid(),
        "root": os.readlink("/proc/self/root"),
        "executor": "grpc://127.0.0.1:4242",
        "buildenv": "0123456789abcdef",
        **fields,
    }
    (directory / "state.json").write_text(json.dumps(state))


def test_no_remote_asked_for_means_no_flags(cache):
    assert host.bazelrc_lines(cache, ["build", "//..."], "0123456789abcdef") == []


def test_config_remote_without_a_cluster_says_how_to_get_one(cache):
    with pytest.raises(LauncherError, match="tools/bazel remote up.*BAZEL_REMOTE"):
        host.bazelrc_lines(cache, ["build", "--config=remote"], "0123456789abcdef")


def test_config_remote_uses_the_running_cluster_and_this_environment(cache):
    write_state(cache)
    lines = host.bazelrc_lines(cache, ["build", "--config=remote"], "0123456789abcdef")
    assert "build:remote --remote_executor=grpc://127.0.0.1:4242" in lines
    assert f"build:remote --remote_default_exec_properties=ISA={host.isa()}" in lines
    assert (
        "build:remote --remote_default_exec_properties=buildenv=0123456789abcdef"
        in lines
    )
    assert "build --config=remote" not in lines


def test_config_remote_is_seen_in_both_spellings(cache):
    for argv in (["build", "--config=remote"], ["test", "--config", "remote", "//..."]):
        with pytest.raises(LauncherError, match="needs a cluster"):
            host.bazelrc_lines(cache, argv, "0123456789abcdef")
    assert host.bazelrc_lines(cache, ["build", "--config", "amd64"], "x") == []


def test_a_cluster_of_another_build_environment_is_refused(cache):
    write_state(cache, buildenv="ffffffffffffffff")
    with pytest.raises(LauncherError, match="restart it: `tools/bazel remote down"):
        host.bazelrc_lines(cache, ["build", "--config=remote"], "0123456789abcdef")


def test_a_dead_supervisor_is_no_cluster(cache):
    write_state(cache, supervisor_pid=2**22 + 1)  # above pid_max's default
    assert host.running_state(host.state_dir(cache)) is None


def test_bazel_remote_alone_turns_remote_execution_on(cache, monkeypatch):
    monkeypatch.setenv(host.REMOTE_VARIABLE, "grpc://buildgrid.example:50051")
    lines = host.bazelrc_lines(cache, ["test", "//..."], "0123456789abcdef")
    assert lines[0] == "build --config=remote"
    assert "build:remote --remote_executor=grpc://buildgrid.example:50051" in lines


def test_bazel_remote_with_config_remote_adds_the_config_once(cache, monkeypatch):
    monkeypatch.setenv(host.REMOTE_VARIABLE, "grpc://buildgrid.example:50051")
    lines = host.bazelrc_lines(cache, ["build", "--config=remote", "//..."], "0123")
    assert "build --config=remote" not in lines
    assert "build:remote --remote_executor=grpc://buildgrid.example:50051" in lines


def test_bazel_remote_buildenv_names_the_workers_of_another_environment(
    cache, monkeypatch
):
    monkeypatch.setenv(host.REMOTE_VARIABLE, "grpc://buildgrid.example:50051")
    monkeypatch.setenv(host.BUILDENV_VARIABLE, "165a9d7968c75d37")
    lines = host.bazelrc_lines(cache, ["test", "//..."], "0123456789abcdef")
    buildenv = [line for line in lines if "buildenv=" in line]
    assert buildenv == [
        "build:remote --remote_default_exec_properties=buildenv=165a9d7968c75d37"
    ]


def test_the_cluster_environment_is_cleared_but_for_buildgrid_and_aws(monkeypatch):
    monkeypatch.setenv("PIP_CERT", "/host/only.pem")
    monkeypatch.setenv("BUILDGRID_S3_BUCKET", "cas")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    environment = host.cluster_environment()
    assert "PIP_CERT" not in environment
    assert environment["BUILDGRID_S3_BUCKET"] == "cas"
    assert environment["AWS_ACCESS_KEY_ID"] == "key"
    assert environment["PATH"] == host.CHROOT_PATH


def test_start_script_mounts_state_and_postgres_directories(tmp_path):
    root, state = tmp_path / "root", tmp_path / "remote"
    script = host.start_script(root, state, ["python3", "supervisor.py"])
    assert f"mount --bind {state} {root}{state}" in script
    assert f"mount --bind {state}/postgres {root}{supervisor.DATA_DIR}" in script
    assert f"mount --bind {state}/tmp {root}/tmp" in script
    assert script.splitlines()[-1] == f"exec chroot {root} python3 supervisor.py"


def test_processes_in_finds_the_processes_of_a_root():
    assert os.getpid() in host.processes_in(os.readlink("/proc/self/root"))
    assert host.processes_in("/nonexistent-root") == []


def test_a_child_that_exits_is_restarted(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "STABLE_SECONDS", 0)  # no back-off: restart at once
    child = supervisor.Child("quick", [sys.executable, "-c", "pass"], tmp_path)
    child.start()
    first = child.process
    first.wait(timeout=60)
    child.check()  # sees the exit, schedules the restart
    child.check()  # restarts
    assert child.restarts == 1 and child.process is not first
    child.process.wait(timeout=60)
    assert child.describe()["restarts"] == 1
