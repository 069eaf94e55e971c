"""The launcher's recipe versioning, mount plan and one-line errors."""

import errno
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import launcher
import pytest
import rootfs


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """A private copy of the recipe files, so a test can change them."""
    files = []
    for path in launcher.RECIPE_FILES:
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        files.append(copy)
    monkeypatch.setattr(launcher, "RECIPE_FILES", files)
    monkeypatch.setattr(launcher, "HERE", tmp_path)
    return tmp_path


def test_recipe_hash_changes_with_the_package_list(recipe):
    before = launcher.recipe_hash()
    assert before == launcher.recipe_hash()
    with open(recipe / "packages.txt", "a") as packages:
        packages.write("jq\n")
    assert launcher.recipe_hash() != before
    assert "jq" in launcher.recipe_packages()


def test_recipe_packages_ignore_comments(recipe):
    packages = launcher.recipe_packages()
    assert "bazel-bootstrap" in packages
    assert not any(p.startswith("#") or " " in p for p in packages)


def test_environment_path_is_versioned_by_recipe(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(
        rootfs,
        "provision",
        lambda env, *_: calls.append(env) or (env / "root").mkdir(parents=True),
    )
    first = launcher.ensure_environment()
    assert (
        first
        == tmp_path / "cache" / "receipt-lambdas" / "buildenv" / launcher.recipe_hash()
    )
    assert launcher.ensure_environment() == first and len(calls) == 1, (
        "provisioned only once"
    )
    with open(recipe / "apt-preferences", "a") as preferences:
        preferences.write("\n# changed\n")
    second = launcher.ensure_environment()
    assert second != first and (first / "root").is_dir(), (
        "the old environment is left alone"
    )


def test_unreachable_mirror_names_the_url(monkeypatch):
    # Bound but not listening while the check runs: refused, and no one else can serve there.
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        monkeypatch.setattr(rootfs, "MIRROR", f"http://127.0.0.1:{port}/debian")
        with pytest.raises(
            rootfs.LauncherError,
            match=f"unreachable: http://127.0.0.1:{port}/debian/dists/trixie/Release",
        ):
            rootfs.check_mirror()


def test_disk_full_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "NEEDED_BYTES", 1 << 62)
    with pytest.raises(
        rootfs.LauncherError, match=r"^disk full: \d+ MiB free in .*XDG_CACHE_HOME"
    ):
        rootfs.check_disk(tmp_path)


def test_missing_command_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(rootfs.LauncherError, match="`unshare` command is missing"):
        launcher.namespace_command()


def test_chroot_script_mounts_paths_at_the_same_place(tmp_path):
    root = tmp_path / "root"
    script = launcher.chroot_script(
        root, [Path("/tmp"), Path("/src/repo")], Path("/src/repo/handlers")
    )
    assert f"mount --rbind /proc {root}/proc" in script
    assert f"mount --rbind /src/repo {root}/src/repo" in script
    assert script.splitlines()[-1].startswith(f"exec chroot {root} ")
    assert "/src/repo/handlers" in script.splitlines()[-1]


def test_bazel_rc_is_rewritten_only_when_it_changes(tmp_path):
    rc = launcher.bazel_rc(tmp_path, [])
    assert f"--repository_cache={tmp_path}/repository-cache" in rc.read_text()
    assert f"--disk_cache={tmp_path}/disk-cache" in rc.read_text()
    stamp = rc.stat().st_mtime_ns
    os.utime(rc, ns=(stamp - 10**9, stamp - 10**9))
    launcher.bazel_rc(tmp_path, [])
    assert rc.stat().st_mtime_ns == stamp - 10**9


def test_remote_cache_replaces_the_disk_cache(tmp_path):
    rc = launcher.bazel_rc(
        tmp_path, ["build --config=s3cache", "build --remote_cache=http://127.0.0.1:1"]
    )
    assert "--disk_cache" not in rc.read_text()
    assert "build --remote_cache=http://127.0.0.1:1" in rc.read_text()


def test_no_bucket_means_no_remote_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("BAZEL_CACHE_S3_BUCKET", raising=False)
    monkeypatch.setenv("BAZEL_CACHE_CONFIG", str(tmp_path / "absent"))
    assert launcher.remote_cache_lines() == []


def test_host_bazel_variable_bypasses_the_environment(tmp_path):
    fake = tmp_path / "bazel"
    fake.write_text('#!/bin/sh\necho host-bazel "$@"\n')
    fake.chmod(0o755)
    entry = Path(launcher.__file__).parent.parent / "bazel"
    result = subprocess.run(
        [entry, "version"],
        env={**os.environ, launcher.HOST_BAZEL_VARIABLE: str(fake)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip() == "host-bazel version"


def test_output_base_follows_bazel_rules(tmp_path):
    assert launcher.output_base(tmp_path, ["--output_base=/x", "build"]) == Path("/x")
    assert (
        launcher.output_base(tmp_path, ["build", "--output_base=/x"]).parent == tmp_path
    ), "a command option"
    digest = launcher.output_base(tmp_path, ["build"]).name
    assert len(digest) == 32 and launcher.output_base(tmp_path, []).name == digest


def test_running_server_is_joined_only_in_the_same_root(tmp_path):
    base = tmp_path / "output_base"
    (base / "server").mkdir(parents=True)
    assert launcher.running_server(base, Path("/")) is None, "no server yet"
    (base / "server" / "server.pid.txt").write_text(str(os.getpid()))
    assert (
        launcher.running_server(base, Path(os.readlink("/proc/self/root")))
        == os.getpid()
    )
    assert launcher.running_server(base, tmp_path / "another-root") is None


def test_bazel_version_must_match_bazelversion(tmp_path, monkeypatch):
    (tmp_path / "manifest.tsv").write_text(
        "bash\t5.2.37-2\tamd64\nbazel-bootstrap\t7.7.1+ds-8+b1\tamd64\n"
    )
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setattr(launcher, "WORKSPACE", workspace)
    (workspace / ".bazelversion").write_text("7.7.1\n")
    launcher.check_bazel_version(tmp_path)
    (workspace / ".bazelversion").write_text("8.0.0\n")
    with pytest.raises(
        rootfs.LauncherError,
        match="asks for Bazel 8.0.0 but the build environment has 7.7.1",
    ):
        launcher.check_bazel_version(tmp_path)


@pytest.fixture
def provisioning(tmp_path, monkeypatch):
    """provision() with an mmdebstrap stand-in that fills in part of the root, then reports
    what mmdebstrap reports when the disk fills up."""
    fake = tmp_path / "mmdebstrap"
    fake.write_text(
        "#!/bin/sh\n"
        'for argument; do case "$argument" in */root) target="$argument" ;; esac; done\n'
        'mkdir -p "$target/usr" && echo partial > "$target/usr/half-written"\n'
        "echo 'I: extracting archives...'\n"
        "echo 'tar: ./usr/lib/jvm/libjvm.so: Cannot write: No space left on device'\n"
        "echo 'E: mmdebstrap failed to extract'\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(rootfs, "ensure_mmdebstrap", lambda: str(fake))
    monkeypatch.setattr(rootfs, "check_mirror", lambda: None)
    monkeypatch.setattr(rootfs, "NEEDED_BYTES", 0)
    return tmp_path / "buildenv" / "0123abcd"


def test_disk_full_during_provisioning_is_one_line_and_leaves_nothing(provisioning):
    provisioning.parent.mkdir()
    with pytest.raises(rootfs.LauncherError) as raised:
        rootfs.provision(provisioning, ["bash"], [])
    message = str(raised.value)
    assert message == (
        f"disk full while provisioning under {provisioning.parent}; free space or set "
        "XDG_CACHE_HOME to another disk"
    )
    assert list(provisioning.parent.iterdir()) == [], "no half-made environment is left"


def test_disk_full_raised_by_provisioning_itself_is_the_same_line(
    recipe, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_space(environment, *_):
        raise OSError(errno.ENOSPC, "No space left on device", str(environment))

    monkeypatch.setattr(rootfs, "provision", no_space)
    with pytest.raises(rootfs.LauncherError, match=r"^disk full while provisioning"):
        launcher.ensure_environment()


def test_a_cache_server_that_fails_to_start_is_one_line_and_the_build_goes_on(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv(launcher.NO_REMOTE_CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("BAZEL_CACHE_CONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("BAZEL_CACHE_S3_BUCKET", "team-cache")
    crash = (
        "import sys; print('Traceback (most recent call last):', file=sys.stderr); "
        "sys.exit('botocore.exceptions.NoCredentialsError: Unable to locate credentials')"
    )
    monkeypatch.setenv(
        "BAZEL_CACHE_SERVER_COMMAND", f"{sys.executable} -c {shlex.quote(crash)}"
    )

    assert launcher.remote_cache_lines() == []

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(
        "buildenv: remote cache disabled: the cache server exited with status 1"
    )
    assert "Unable to locate credentials" in line
    assert "unset BAZEL_CACHE_S3_BUCKET" in line


def test_only_build_commands_load_the_metrics_recorder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BUILD_METRICS", raising=False)
    for name in [m for m in sys.modules if m.startswith("tools.metrics")]:
        monkeypatch.delitem(sys.modules, name)
    for argv in (["info"], ["query", "//..."], ["shutdown"], ["--version"]):
        assert launcher.metrics_recording(argv) is None
    assert "tools.metrics.record" not in sys.modules, "info/query stay fast"
    recording = launcher.metrics_recording(["test", "//tools/..."])
    assert recording.bazel_args[:2] == [
        "test",
        f"--build_event_json_file={recording.events}",
    ]
