"""oci_pull's fetcher (tools/registry/pull.py) against docker-registry with token auth, seeded by skopeo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.push import support
from tools.registry import client, layout, pull


def seed(
    registry: support.RunningRegistry, image: support.BuiltImage, repository: str
) -> None:
    support.skopeo_copy(
        f"oci:{image.layout}",
        f"docker://{registry.address}/{repository}:seeded",
        "--dest-tls-verify=false",
        f"--dest-creds={registry.user}:{registry.password}",
    )


def run_pull(*argv: str) -> tuple[int, str, str]:
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-B", str(root / "tools" / "registry" / "pull.py"), *argv],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def test_pull_by_digest_with_token_auth_reproduces_the_image(
    token_registry, token_server, images, tmp_path
):
    image = images.build("receipt_upload")
    seed(token_registry, image, "lambda/python")
    output, metadata = (
        tmp_path / "external" / "layout",
        tmp_path / "external" / "metadata",
    )
    code, stdout, stderr = run_pull(
        f"--registry={token_registry.address}",
        "--repository=lambda/python",
        f"--digest={image.digest}",
        f"--output={output}",
        f"--metadata={metadata}",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["manifest"] == image.digest and summary["platform"] == "linux/arm64"
    assert summary["layers"] == image.layer_digests
    pulled = layout.read_image(output)
    assert pulled.digest == image.digest and pulled.manifest == image.manifest
    for blob in pulled.blobs:
        assert (
            blob.path.read_bytes()
            == (image.layout / "blobs" / "sha256" / blob.digest[7:]).read_bytes()
        )
    # The token flow was used, and no staging directory was left behind.
    assert any(claims["sub"] == "pusher" for claims in token_server.issued)
    assert sorted(p.name for p in output.parent.iterdir()) == ["layout", "metadata"]

    # What tools/oci's OciImageInfo needs of a base image.
    manifest, config = (
        json.loads(image.manifest),
        json.loads(pulled.config.path.read_bytes()),
    )
    descriptor = json.loads((metadata / "descriptor.json").read_text())
    assert descriptor == {
        "mediaType": client.OCI_MANIFEST,
        "digest": image.digest,
        "size": len(image.manifest),
        "platform": {"architecture": "arm64", "os": "linux"},
    }
    assert (metadata / "digest").read_text() == image.digest
    for number, layer in enumerate(manifest["layers"]):
        layer_metadata = json.loads((metadata / f"layer_{number}.json").read_text())
        assert layer_metadata["descriptor"] == layer
        assert layer_metadata["diff_id"] == config["rootfs"]["diff_ids"][number]


def test_pull_picks_the_platform_from_an_index(open_registry, tmp_path):
    layer = support.layer_bytes({"var/runtime/bootstrap": b"#!/bin/sh\n"})
    built = {
        arch: support.write_image(tmp_path / arch, [layer], architecture=arch)
        for arch in ("amd64", "arm64")
    }
    regclient = open_registry.client()
    for image in built.values():
        for blob in (image.layout / "blobs" / "sha256").iterdir():
            digest = "sha256:" + blob.name
            if blob.read_bytes() != image.manifest:
                regclient.upload_blob("base", digest, blob, blob.stat().st_size)
        regclient.put_manifest(
            "base", image.digest, image.manifest, client.OCI_MANIFEST
        )
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": client.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": client.OCI_MANIFEST,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for arch, image in built.items()
            ],
        }
    ).encode()
    index_digest = regclient.put_manifest("base", "multi", index, client.OCI_INDEX)
    registry = client.Registry(client.parse_registry(open_registry.address))

    summary = pull.pull(
        registry, "base", index_digest, tmp_path / "arm", platform="linux/arm64"
    )
    assert summary["manifest"] == built["arm64"].digest
    assert layout.read_image(tmp_path / "arm").platform == "linux/arm64"

    with pytest.raises(
        client.RegistryError, match=r"multi-platform index \(linux/amd64, linux/arm64\)"
    ):
        pull.pull(registry, "base", index_digest, tmp_path / "none")
    with pytest.raises(client.RegistryError, match="has no image for linux/s390x"):
        pull.pull(
            registry, "base", index_digest, tmp_path / "s390x", platform="linux/s390x"
        )
    assert not (tmp_path / "none").exists() and not (tmp_path / "s390x").exists()


def test_a_blob_the_registry_serves_corrupted_is_refused(
    open_registry, images, tmp_path
):
    image = images.build("similarity")
    open_registry.user = open_registry.password = ""
    support.skopeo_copy(
        f"oci:{image.layout}",
        f"docker://{open_registry.address}/base:v1",
        "--dest-tls-verify=false",
    )
    handler_layer = image.layer_digests[2]
    stored = next(
        (open_registry.server.root / "storage").rglob(
            f"blobs/sha256/{handler_layer[7:9]}/{handler_layer[7:]}/data"
        )
    )
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    output = tmp_path / "layout"
    code, _, stderr = run_pull(
        f"--registry={open_registry.address}",
        "--repository=base",
        f"--digest={image.digest}",
        f"--output={output}",
    )
    assert code == 1
    assert f"blob {handler_layer} of base" in stderr and "refusing it" in stderr
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pull-")] == []


def test_an_unknown_digest_and_bad_arguments_are_clear_errors(open_registry, tmp_path):
    missing = "sha256:" + "0" * 64
    code, _, stderr = run_pull(
        f"--registry={open_registry.address}",
        "--repository=base",
        f"--digest={missing}",
        f"--output={tmp_path / 'x'}",
    )
    assert code == 1 and "not found" in stderr and missing in stderr
    code, _, stderr = run_pull(
        f"--registry={open_registry.address}",
        "--repository=base",
        "--digest=latest",
        f"--output={tmp_path / 'x'}",
    )
    assert code == 1 and "'latest' is not a sha256 digest" in stderr
