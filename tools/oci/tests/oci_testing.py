"""Helpers for the tests of tools/oci: run the tools in-process and read what they wrote."""

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request

import pytest

from tools.oci import image, layer, layout


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


def start_registry(directory, attempts=3):
    """A local registry server (Debian's docker-registry) on a free loopback port.

    Returns (process, "127.0.0.1:port"). A port taken between probing and binding (other
    tests start registries too) means another try on a new port.
    """
    binary = require_tool("docker-registry")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for attempt in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = os.path.join(directory, f"registry-{attempt}.yml")
        with open(config, "w") as handle:
            handle.write(
                "version: 0.1\n"
                f"storage:\n  filesystem:\n    rootdirectory: {directory}/registry-data\n"
                f"http:\n  addr: 127.0.0.1:{port}\n"
                "log:\n  level: error\n"
            )
        log_path = os.path.join(directory, f"registry-{attempt}.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [binary, "serve", config], stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            try:
                direct.open(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            time.sleep(0.2)  # the answer may have come from someone else's server
            if process.poll() is None:
                return process, f"127.0.0.1:{port}"
        process.kill()
        process.wait()
    raise RuntimeError(f"docker-registry did not start; see {directory}/registry-*.log")
