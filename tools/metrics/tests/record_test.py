"""What tools/bazel does around a recorded command: the flag it adds, the row and line after the
command, the push numbers, and that a metrics problem never changes the exit status."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.metrics import record, store
from tools.push import report

TESTDATA = Path(__file__).parent / "testdata"
WORKSPACE = Path("/nonexistent-workspace")


@pytest.fixture(autouse=True)
def cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(record.OPT_OUT_VARIABLE, raising=False)
    return tmp_path / "cache"


def run_recorded(recording: record.Recording, script: str) -> int:
    """Runs a Python snippet standing in for Bazel with the recording's environment, then
    finishes the recording, as tools/bazel does; returns the snippet's exit status."""
    bazel = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **recording.env},
        check=False,
    )
    recording.finish()
    return bazel.returncode


def fixture_without_outputs(name: str, tmp_path: Path) -> Path:
    """A fixture whose image outputs are gone, so what this machine's bazel-out holds does
    not matter."""
    events = re.sub(
        r"file://[^\"]*/manifest\.json",
        f"file://{tmp_path / 'gone' / 'manifest.json'}",
        (TESTDATA / f"{name}.bep.json").read_text(),
    )
    path = tmp_path / f"{name}.bep.json"
    path.write_text(events)
    return path


def test_event_file_flag_goes_right_after_the_command():
    recording = record.Recording.start(
        ["--output_base=/x", "build", "//a", "--", "arg"], WORKSPACE
    )
    assert recording.bazel_args == [
        "--output_base=/x",
        "build",
        f"--build_event_json_file={recording.events}",
        "//a",
        "--",
        "arg",
    ]


def test_users_own_event_file_is_used_and_kept(tmp_path):
    recording = record.Recording.start(
        ["test", "//a", f"--build_event_json_file={tmp_path / 'mine.json'}"], WORKSPACE
    )
    assert recording.bazel_args == [
        "test",
        "//a",
        f"--build_event_json_file={tmp_path / 'mine.json'}",
    ]
    assert recording.events == tmp_path / "mine.json"


@pytest.mark.parametrize(
    "argv", [["info"], ["query", "//..."], ["shutdown"], ["--version"], []]
)
def test_other_commands_are_not_recorded(argv):
    assert record.Recording.start(argv, WORKSPACE) is None


def test_opt_out(monkeypatch):
    monkeypatch.setenv("BUILD_METRICS", "0")
    assert record.Recording.start(["build", "//a"], WORKSPACE) is None


def test_run_records_a_row_prints_the_line_and_keeps_the_exit_status(
    cache_home, capfd, tmp_path
):
    recording = record.Recording.start(["build", "//handlers/..."], WORKSPACE)
    fixture = fixture_without_outputs("incremental_build", tmp_path)
    status = run_recorded(
        recording,
        f"import shutil, sys; shutil.copy({str(fixture)!r}, {str(recording.events)!r}); sys.exit(3)",
    )
    assert status == 3
    err = capfd.readouterr().err
    assert err == "3 actions (0 cached, 3 run) in 25.0 s, cache hit rate 0%\n"
    connection = store.connect(cache_home / "receipt-lambdas/metrics/history.sqlite3")
    (row,) = store.recent_builds(connection, 10)
    assert (row["kind"], row["local_actions"], row["git_commit"]) == (
        "incremental",
        3,
        None,
    )
    assert not recording.events.exists()
    assert (cache_home / "receipt-lambdas/metrics" / record.LAST_EVENTS).exists()


def test_record_py_records_what_the_fast_path_had_bazel_write(cache_home, tmp_path):
    pending = cache_home / "receipt-lambdas/metrics/pending"
    pending.mkdir(parents=True)
    events = pending / "4242.bep.json"
    shutil.copy(fixture_without_outputs("incremental_build", tmp_path), events)
    # As tools/bazel runs it: by path, isolated from the user's Python settings.
    result = subprocess.run(
        [sys.executable, "-I", record.__file__, str(events)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        0,
        "3 actions (0 cached, 3 run) in 25.0 s, cache hit rate 0%\n",
    )
    connection = store.connect(cache_home / "receipt-lambdas/metrics/history.sqlite3")
    (row,) = store.recent_builds(connection, 10)
    assert row["kind"] == "incremental"
    assert not events.exists()
    assert (cache_home / "receipt-lambdas/metrics" / record.LAST_EVENTS).exists()


def test_git_commit_is_heads_and_none_outside_a_work_tree(tmp_path):
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
    )
    assert record.git_commit(tmp_path) == git("rev-parse", "HEAD")
    assert record.git_commit(tmp_path / "nonexistent") is None


def test_images_the_build_made_are_stored(cache_home, tmp_path):
    # The cold build's events, one image pointing at a real image tests/BUILD.bazel builds.
    events = (TESTDATA / "cold_build.bep.json").read_text()
    built = Path("tools/metrics/tests/image_one/manifest.json").absolute()
    # The other five images' outputs are gone, as after `bazel clean`: they are left out.
    events = re.sub(
        r"file://[^\"]*/(\w+)/image_any_platform/manifest\.json",
        lambda m: (
            f"file://{built if m[1] == 'submit_to_openai' else tmp_path / 'gone'}"
        ),
        events,
    )
    (tmp_path / "cold.bep.json").write_text(events)
    recording = record.Recording.start(["build", "//handlers/..."], WORKSPACE)
    script = f"import shutil; shutil.copy({str(tmp_path / 'cold.bep.json')!r}, {str(recording.events)!r})"
    assert run_recorded(recording, script) == 0
    connection = store.connect(cache_home / "receipt-lambdas/metrics/history.sqlite3")
    (image,) = connection.execute("SELECT * FROM images").fetchall()
    assert image["label"] == "//handlers/submit_to_openai:image"
    assert image["layer_count"] == 2 and image["uncompressed_bytes"] > 0


def test_push_numbers_written_by_push_are_stored(cache_home, tmp_path):
    recording = record.Recording.start(["run", "//:push"], WORKSPACE)
    fixture = fixture_without_outputs("noop_build", tmp_path)
    # The stand-in for `bazel run //:push` calls push.py's own writer, with the variable
    # tools/bazel passes it.
    script = (
        "import shutil, sys\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "from tools.push import push, report\n"
        f"shutil.copy({str(fixture)!r}, {str(recording.events)!r})\n"
        "results = [push.Result('submit', 'receipts/submit', uploaded=100, skipped=7, seconds=1.5),\n"
        "           push.Result('poll', 'receipts/poll', mounted=40, seconds=0.5)]\n"
        "report.write_metrics('123.dkr.ecr.eu-west-1.amazonaws.com', results, 2.25)\n"
    )
    assert run_recorded(recording, script) == 0
    connection = store.connect(cache_home / "receipt-lambdas/metrics/history.sqlite3")
    (pushed,) = store.pushes(connection)
    assert pushed["registry"] == "123.dkr.ecr.eu-west-1.amazonaws.com"
    assert (
        pushed["uploaded_bytes"],
        pushed["mounted_bytes"],
        pushed["skipped_bytes"],
    ) == (
        100,
        40,
        7,
    )
    assert pushed["seconds"] == 2.25 and pushed["build_id"] is not None
    assert not recording.push_file.exists()


def test_push_writes_nothing_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(report.METRICS_FILE_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    report.write_metrics("registry", [], 1.0)
    assert list(tmp_path.iterdir()) == []


def test_broken_events_give_one_warning_and_the_commands_status(capfd):
    recording = record.Recording.start(["build", "//a"], WORKSPACE)
    status = run_recorded(
        recording, f"open({str(recording.events)!r}, 'w').write('not json\\n')"
    )
    assert status == 0
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "build metrics: not recorded: BepError"
    )


def test_no_events_at_all(capfd):
    recording = record.Recording.start(["build", "//a"], WORKSPACE)
    assert run_recorded(recording, "import sys; sys.exit(2)") == 2
    assert capfd.readouterr().err == (
        "build metrics: not recorded: Bazel wrote no build events (it stopped before building)\n"
    )


def test_unwritable_history_directory_warns_and_builds(cache_home, capfd):
    cache_home.mkdir(parents=True)
    (cache_home / "receipt-lambdas").write_text("a file where a directory should be")
    assert record.Recording.start(["build", "//a"], WORKSPACE) is None
    assert capfd.readouterr().err.startswith(
        "build metrics: not recorded: cannot create"
    )
