"""Helpers for the tests of tools/oci: run the tools in-process and read what they wrote."""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tools.oci import image, layer, layout
from tools.registry.local_registry import LocalRegistry


def make_layer(directory, name, *args):
    """Runs layer.py; returns (metadata dict, metadata path, blob path)."""
    blob = os.path.join(directory, f"{name}.tar.gz")
    metadata = os.path.join(directory, f"{name}.json")
    layer.main(["--output", blob, "--metadata", metadata, *args])
    with open(metadata) as handle:
        return json.load(handle), metadata, blob


def make_image(directory, name, layers, *args, base=None):
    """Runs image.py image; layers are metadata paths, base an earlier make_image result."""
    paths = {
        kind: os.path.join(directory, f"{name}.{kind}")
        for kind in ("config.json", "manifest.json", "descriptor.json", "digest")
    }
    argv = ["image"]
    if base:
        argv += [
            "--base-manifest",
            base["manifest.json"],
            "--base-config",
            base["config.json"],
        ]
    for metadata in layers:
        argv += ["--layer", metadata]
    argv += [
        *args,
        "--output-config",
        paths["config.json"],
        "--output-manifest",
        paths["manifest.json"],
        "--output-descriptor",
        paths["descriptor.json"],
        "--output-digest",
        paths["digest"],
    ]
    image.main(argv)
    return paths


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def read_text(path):
    with open(path) as handle:
        return handle.read()


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def tar_bytes(blob_path):
    with open(blob_path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def tar_members(blob_path):
    """{name: (TarInfo, content bytes or None)} in archive order (a dict keeps it)."""
    members = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(blob_path))) as archive:
        for member in archive.getmembers():
            content = archive.extractfile(member).read() if member.isreg() else None
            members[member.name] = (member, content)
    return members


def sha256_file(path):
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.sha256(handle.read()).hexdigest()


def write_layout(output, root, blobs, layers):
    argv = ["layout", "--output", output, "--root", root]
    for blob in blobs:
        argv += ["--blob", blob]
    for metadata, blob in layers:
        argv += ["--layer", metadata, blob]
    layout.main(argv)


def require_tool(name):
    """The path of an external tool; skipped on a dev host without it, a failure where OCI_TEST_REQUIRE_TOOLS=1."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("OCI_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(
                f"{name} is not installed, and OCI_TEST_REQUIRE_TOOLS=1 requires it"
            )
        pytest.skip(f"{name} is not installed")
    return path


@contextlib.contextmanager
def running_registry(directory):
    """Debian's docker-registry on a loopback port it picks itself; yields "127.0.0.1:port"."""
    require_tool("docker-registry")
    with LocalRegistry(Path(directory) / "registry") as server:
        yield server.address
