"""The SQLite history: schema version, what a build row holds, images, pushes."""

import sqlite3
from pathlib import Path

import pytest

from tools.metrics import bep, images, store

TESTDATA = Path(__file__).parent / "testdata"
PACKAGE = Path("tools/metrics/tests")


def fixture(name: str) -> bep.BuildSummary:
    return bep.parse(TESTDATA / f"{name}.bep.json")


def test_build_row_holds_the_summary(tmp_path):
    connection = store.connect(tmp_path / "history.sqlite3")
    summary = fixture("cold_build")
    build_id = store.add_build(connection, summary, "abc123", [])
    row = connection.execute(
        "SELECT * FROM builds WHERE id = ?", (build_id,)
    ).fetchone()
    assert dict(row) == {
        "id": build_id,
        "invocation_id": summary.invocation_id,
        "started_at": 1796152937.94,
        "git_commit": "abc123",
        "command": "build",
        "patterns": "//handlers/...",
        "configuration": "arm64",
        "kind": "cold",
        "wall_seconds": 210.44,
        "critical_path_seconds": 30.13,
        "actions": 27,
        "remote_cache_hits": 0,
        "disk_cache_hits": 27,
        "local_actions": 0,
        "remote_actions": 0,
        "cache_hit_rate": 100.0,
        "tests_passed": 0,
        "tests_failed": 0,
        "exit_code": "SUCCESS",
        "success": 1,
    }


def test_same_invocation_is_stored_once(tmp_path):
    connection = store.connect(tmp_path / "history.sqlite3")
    first = store.add_build(connection, fixture("noop_build"), None, [])
    assert store.add_build(connection, fixture("noop_build"), None, []) == first
    assert connection.execute("SELECT COUNT(*) FROM builds").fetchone()[0] == 1


def test_recent_builds_oldest_first(tmp_path):
    connection = store.connect(tmp_path / "history.sqlite3")
    for name in ("incremental_build", "cold_build", "noop_build", "test"):
        store.add_build(connection, fixture(name), None, [])
    rows = store.recent_builds(connection, 3)
    started = [row["started_at"] for row in rows]
    assert started == sorted(started) and len(rows) == 3
    assert rows[-1]["invocation_id"] == fixture("incremental_build").invocation_id


def test_images_and_layers(tmp_path):
    connection = store.connect(tmp_path / "history.sqlite3")
    built = [
        images.read_image(
            f"//tools/metrics/tests:{name}", PACKAGE / name / "manifest.json"
        )
        for name in ("image_one", "image_two")
    ]
    store.add_build(connection, fixture("cold_build"), None, built)
    (architecture,) = store.architectures(connection)
    found = store.latest_images(connection, architecture)
    assert [image["label"] for image in found] == [
        "//tools/metrics/tests:image_one",
        "//tools/metrics/tests:image_two",
    ]
    for row, image in zip(found, built, strict=True):
        assert row["digest"] == image.digest
        assert row["layer_count"] == 2
        assert row["compressed_bytes"] == image.compressed_bytes
        assert row["uncompressed_bytes"] == image.uncompressed_bytes
        assert row["shared_bytes"] == image.layers[0].compressed_bytes
        assert [layer["digest"] for layer in row["layers"]] == [
            layer.digest for layer in image.layers
        ]


def test_pushes_total_their_images(tmp_path):
    connection = store.connect(tmp_path / "history.sqlite3")
    store.add_push(
        connection,
        pushed_at=100.0,
        registry="127.0.0.1:5055",
        seconds=3.5,
        images=[
            store.PushedImage("a", "receipts/a", 1000, 0, 50, 1.0),
            store.PushedImage("b", "receipts/b", 10, 900, 0, 2.0, error="denied"),
        ],
    )
    (push,) = store.pushes(connection)
    assert (push["uploaded_bytes"], push["mounted_bytes"], push["skipped_bytes"]) == (
        1010,
        900,
        50,
    )
    assert push["images"] == 2 and push["success"] == 0 and push["seconds"] == 3.5


def test_schema_version_is_recorded_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "history.sqlite3"
    store.connect(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        raw.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    with pytest.raises(store.StoreError, match="newer than this checkout"):
        store.connect(path)


def test_default_path_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert store.default_path() == tmp_path / "receipt-lambdas/metrics/history.sqlite3"
