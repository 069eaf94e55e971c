"""The real handler images through the real `bazel run` entry points: the runner scripts of
//handlers/<name>:push and of an oci_push_all of all six (what //:push is), pushing to
Debian's docker-registry on loopback. Runs under Bazel, which builds the images."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.push import support

HANDLERS = (
    "compact_embeddings",
    "find_unembedded_lines",
    "list_pending_batches",
    "poll_line_embeddings",
    "poll_word_embeddings",
    "submit_to_openai",
)
RUNFILES = Path(
    os.environ.get("RUNFILES_DIR") or os.environ.get("TEST_SRCDIR") or "/nonexistent"
)
WORKSPACE = RUNFILES / "_main"

pytestmark = pytest.mark.skipif(
    not (WORKSPACE / "tests" / "push" / "all_handlers_push").exists(),
    reason="needs the Bazel-built push targets (bazel test //tests/push:handler_images_test)",
)


def run(runner: Path, *argv: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RUNFILES_DIR": str(RUNFILES)}
    result = subprocess.run(
        [str(runner), *argv],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{runner} {' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


def local_digest(name: str) -> str:
    targets = json.loads(
        (WORKSPACE / "handlers" / name / "push.targets.json").read_text()
    )
    index = json.loads((RUNFILES / targets[0]["layout"] / "index.json").read_text())
    return index["manifests"][0]["digest"]


def test_push_all_handler_images_then_nothing_then_pull_back(tmp_path):
    references = tmp_path / "references.json"
    with support.registry(tmp_path / "registry") as registry:
        where = [
            "--registry",
            registry.address,
            "--tag",
            "test",
            "--output-json",
            str(references),
        ]
        first = run(WORKSPACE / "tests" / "push" / "all_handlers_push", *where)
        pushed = json.loads(references.read_text())["images"]
        assert sorted(pushed) == sorted(HANDLERS)
        for name in HANDLERS:
            assert pushed[name]["digest"] == local_digest(name), name
            assert pushed[name]["platform"] in ("linux/arm64", "linux/amd64")
            assert pushed[name]["reference"] in first.stdout
        assert "uploaded 0 B" not in first.stdout

        again = run(WORKSPACE / "tests" / "push" / "all_handlers_push", *where)
        assert "uploaded 0 B, mounted 0 B" in again.stdout

        one = run(
            WORKSPACE / "handlers" / "submit_to_openai" / "push",
            *where[:2],
            "--dry-run",
        )
        assert "would upload 0 B" in one.stdout

        pulled = tmp_path / "pulled"
        repository = pushed["submit_to_openai"]["repository"]
        support.skopeo_copy(
            f"docker://{registry.address}/{repository}:test",
            f"oci:{pulled}",
            "--src-tls-verify=false",
        )
        index = json.loads((pulled / "index.json").read_text())
        assert [entry["digest"] for entry in index["manifests"]] == [
            local_digest("submit_to_openai")
        ]
