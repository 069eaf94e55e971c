"""Build event files from real Bazel 7.7.1 builds of this repository (testdata/regenerate.sh)."""

from pathlib import Path

import pytest

from tools.metrics import bep

TESTDATA = Path(__file__).parent / "testdata"


def parse(name: str) -> bep.BuildSummary:
    return bep.parse(TESTDATA / f"{name}.bep.json")


def test_cold_build_of_the_handlers_from_the_disk_cache():
    summary = parse("cold_build")
    assert summary.command == "build"
    assert summary.patterns == ["//handlers/..."]
    assert summary.configuration == "arm64"
    assert summary.kind == "cold"
    assert summary.success and summary.exit_code == "SUCCESS"
    assert summary.invocation_id == "13bc3366-f9a4-48e6-8486-76ab4d277f0a"
    assert summary.started_at == 1796152937.940
    assert summary.wall_seconds == 210.44
    assert summary.critical_path_seconds == 30.13
    # "101 processes: 27 disk cache hit, 74 internal."
    assert (summary.disk_cache_hits, summary.remote_cache_hits) == (27, 0)
    assert (summary.local_actions, summary.remote_actions) == (0, 0)
    assert summary.cache_hit_rate == 100.0
    assert summary.summary_line() == (
        "27 actions (27 cached, 0 run) in 210.4 s, cache hit rate 100%"
    )
    labels = sorted(image.label for image in summary.images)
    assert labels == [
        f"//handlers/{name}:image"
        for name in (
            "compact_embeddings",
            "find_unembedded_lines",
            "list_pending_batches",
            "poll_line_embeddings",
            "poll_word_embeddings",
            "submit_to_openai",
        )
    ]
    assert all(image.manifest.name == "manifest.json" for image in summary.images)


def test_noop_build():
    summary = parse("noop_build")
    assert summary.kind == "no-op"
    assert summary.actions == 0 and summary.cache_hit_rate is None
    assert summary.wall_seconds == 6.029
    assert summary.summary_line() == (
        "0 actions (0 cached, 0 run) in 6.0 s, cache hit rate n/a (nothing to build)"
    )


def test_incremental_build_runs_the_edited_layer_locally():
    summary = parse("incremental_build")
    assert summary.kind == "incremental"
    # "processwrapper-sandbox": the chroot has no user namespaces for linux-sandbox.
    assert (summary.local_actions, summary.cached) == (3, 0)
    assert summary.cache_hit_rate == 0.0


def test_failed_build():
    summary = parse("failed_build")
    assert not summary.success
    assert summary.exit_code == "BUILD_FAILURE"
    assert summary.patterns == ["//handlers/does_not_exist:image"]


def test_config_amd64_is_read_from_the_expanded_command_line():
    summary = parse("amd64_build")
    assert summary.configuration == "amd64"
    assert summary.disk_cache_hits == 11


def test_test_command_counts_test_results():
    summary = parse("test")
    assert summary.command == "test"
    assert (summary.tests_passed, summary.tests_failed) == (2, 0)
    assert summary.images == ()


def test_truncated_file_is_an_error_naming_the_missing_event(tmp_path):
    lines = (TESTDATA / "cold_build.bep.json").read_text().splitlines()
    truncated = tmp_path / "truncated.bep.json"
    truncated.write_text("\n".join(lines[:20]) + "\n")
    with pytest.raises(bep.BepError, match="no buildFinished event"):
        bep.parse(truncated)


def test_a_file_that_is_not_json_events_says_so(tmp_path):
    binary = tmp_path / "events.bin"
    binary.write_bytes(b"\x08\x01garbage\n")
    with pytest.raises(bep.BepError, match="--build_event_json_file"):
        bep.parse(binary)


def test_configuration_flag_forms():
    assert bep.configuration_of([]) == "arm64"
    assert (
        bep.configuration_of(["--//platforms:lambda=//platforms:linux_amd64"])
        == "amd64"
    )
    assert (
        bep.configuration_of(
            [
                "--@//platforms:lambda=//platforms:linux_amd64",
                "--//platforms:lambda=//platforms:linux_arm64",
            ]
        )
        == "arm64"
    )
