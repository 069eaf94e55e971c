"""//base:python: one layer that is exactly the runtime tar, and the Lambda configuration."""

import hashlib
import json
import tarfile
from pathlib import Path

CONFIG = json.loads(Path("base/python/config.json").read_text())
MANIFEST = json.loads(Path("base/python/manifest.json").read_text())
ROOTFS = next(
    Path("base").glob("rootfs_*.tar")
)  # the target platform's, through //base:rootfs
ELF_MACHINE_TO_ARCHITECTURE = {62: "amd64", 183: "arm64"}


def test_the_only_layer_is_the_runtime_tar():
    assert len(MANIFEST["layers"]) == 1
    assert CONFIG["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(ROOTFS.read_bytes()).hexdigest()
    ]
    assert (
        MANIFEST["layers"][0]["mediaType"]
        == "application/vnd.oci.image.layer.v1.tar+gzip"
    )


def test_architecture_matches_the_interpreter():
    with tarfile.open(ROOTFS) as tar:
        header = tar.extractfile("usr/bin/python3.13").read(20)
    assert (
        CONFIG["architecture"]
        == ELF_MACHINE_TO_ARCHITECTURE[int.from_bytes(header[18:20], "little")]
    )
    assert CONFIG["os"] == "linux"


def test_lambda_configuration():
    assert CONFIG["config"]["Entrypoint"] == [
        "/usr/bin/python3.13",
        "-m",
        "awslambdaric",
    ]
    assert CONFIG["config"]["WorkingDir"] == "/var/task"
    assert "LANG=C.UTF-8" in CONFIG["config"]["Env"]
    assert CONFIG["created"] == "1970-01-01T00:00:00Z"
    assert [entry["created"] for entry in CONFIG["history"]] == ["1970-01-01T00:00:00Z"]
