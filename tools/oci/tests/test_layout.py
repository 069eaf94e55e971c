"""Tests of tools/oci/layout.py, and of the images it packs read back by skopeo, umoci and crane."""

import json
import os
import subprocess
import tarfile

import pytest

from tools.oci import common, layout
from tools.oci.common import UsageError
from tools.oci.tests.oci_testing import (
    make_image,
    make_layer,
    read_bytes,
    read_json,
    read_text,
    require_tool,
    running_registry,
    write_layout,
)


@pytest.fixture
def built(tmp_path):
    """A base image (runtime layer) and an app image on it, as the rules would build them."""
    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "python").write_bytes(b"#!/bin/sh\necho python\n")
    (sources / "handler.py").write_bytes(b"def handle(event, context):\n    return 1\n")
    runtime, runtime_meta, runtime_blob = make_layer(
        tmp_path,
        "runtime",
        "--file", "/usr/bin/python3.13", str(sources / "python"),
        "--mode", "/usr/bin/python3.13", "0755",
        "--symlink", "/usr/bin/python3", "python3.13",
        "--dir", "/tmp",
        "--mode", "/tmp", "1777",
        "--created-by", "runtime",
    )  # fmt: skip
    app, app_meta, app_blob = make_layer(
        tmp_path,
        "app",
        "--file",
        "/var/task/handler.py",
        str(sources / "handler.py"),
        "--created-by",
        "app",
    )
    base = make_image(
        tmp_path,
        "base",
        [runtime_meta],
        "--entrypoint", '["/usr/bin/python3.13", "-m", "awslambdaric"]',
        "--env", '{"LANG": "C.UTF-8"}',
        "--os", "linux",
        "--architecture", "amd64",
    )  # fmt: skip
    image = make_image(
        tmp_path,
        "app",
        [app_meta],
        "--cmd",
        '["handler.handle"]',
        "--workdir",
        "/var/task",
        base=base,
    )
    return {
        "base": base,
        "image": image,
        "layers": [(runtime_meta, runtime_blob), (app_meta, app_blob)],
        "diff_ids": [runtime["diff_id"], app["diff_id"]],
    }


def image_layout(tmp_path, built, name="layout"):
    output = str(tmp_path / name)
    image = built["image"]
    write_layout(
        output, image["manifest.json"], [image["config.json"]], built["layers"]
    )
    return output


def test_layout_has_the_oci_structure_and_hard_links(tmp_path, built):
    output = image_layout(tmp_path, built)
    assert read_json(os.path.join(output, "oci-layout")) == {
        "imageLayoutVersion": "1.0.0"
    }
    index = read_json(os.path.join(output, "index.json"))
    digest = read_text(built["image"]["digest"])
    assert index["manifests"] == [
        {
            "mediaType": common.OCI_MANIFEST,
            "digest": digest,
            "size": os.path.getsize(built["image"]["manifest.json"]),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }
    ]
    blobs = sorted(os.listdir(os.path.join(output, "blobs", "sha256")))
    manifest = read_json(built["image"]["manifest.json"])
    expected = [
        manifest["config"]["digest"],
        digest,
        *(layer["digest"] for layer in manifest["layers"]),
    ]
    assert blobs == sorted(common.digest_hex(d) for d in expected)
    layer_blob = built["layers"][0][1]
    linked = os.path.join(
        output, "blobs", "sha256", common.digest_hex(manifest["layers"][0]["digest"])
    )
    assert os.stat(linked).st_ino == os.stat(layer_blob).st_ino  # linked, not copied


def test_layout_refuses_a_missing_blob(tmp_path, built):
    image = built["image"]
    with pytest.raises(UsageError, match="referenced by .* was not given"):
        write_layout(
            str(tmp_path / "out"),
            image["manifest.json"],
            [image["config.json"]],
            built["layers"][:1],
        )
    with pytest.raises(UsageError, match="not an image manifest or index"):
        write_layout(str(tmp_path / "out"), image["config.json"], [], built["layers"])


def test_layer_blob_must_match_its_metadata(tmp_path, built):
    metadata, _ = built["layers"][0]
    other_blob = built["layers"][1][1]
    with pytest.raises(
        UsageError, match="the two must come from the same layer action"
    ):
        write_layout(
            str(tmp_path / "out"),
            built["image"]["manifest.json"],
            [],
            [(metadata, other_blob)],
        )


def make_tarball(tmp_path, built, *tags):
    os.makedirs(tmp_path, exist_ok=True)
    output = str(tmp_path / "image.tar")
    image = built["image"]
    argv = [
        "tarball",
        "--output",
        output,
        "--root",
        image["manifest.json"],
        "--blob",
        image["config.json"],
    ]
    for metadata, blob in built["layers"]:
        argv += ["--layer", metadata, blob]
    for tag in tags:
        argv += ["--repo-tag", tag]
    layout.main(argv)
    return output


def test_tarball_has_docker_manifest_and_blobs(tmp_path, built):
    output = make_tarball(tmp_path, built, "receipts/app:latest", "receipts/app:v1")
    with tarfile.open(output) as archive:
        names = archive.getnames()
        docker_manifest = json.load(archive.extractfile("manifest.json"))
        for member in archive.getmembers():
            assert (member.mtime, member.uid, member.uname) == (0, 0, "")
    manifest = read_json(built["image"]["manifest.json"])
    assert docker_manifest == [
        {
            "Config": "blobs/sha256/" + common.digest_hex(manifest["config"]["digest"]),
            "RepoTags": ["receipts/app:latest", "receipts/app:v1"],
            "Layers": [
                "blobs/sha256/" + common.digest_hex(layer["digest"])
                for layer in manifest["layers"]
            ],
        }
    ]
    assert {"index.json", "oci-layout", "manifest.json"} <= set(names)
    assert all(path in names for path in docker_manifest[0]["Layers"])
    again = make_tarball(
        tmp_path / "again", built, "receipts/app:latest", "receipts/app:v1"
    )
    assert read_bytes(output) == read_bytes(again)


def test_tarball_rejects_tags_without_a_tag(tmp_path, built):
    with pytest.raises(UsageError, match="needs the form name:tag"):
        make_tarball(tmp_path, built, "localhost:5000/app")


def skopeo(*args, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    command = [require_tool("skopeo"), "--policy", str(policy), *args]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        command, check=True, capture_output=True, text=True, env=env
    ).stdout


def test_skopeo_reads_and_copies_the_layout(tmp_path, built):
    output = image_layout(tmp_path, built)
    inspected = json.loads(skopeo("inspect", f"oci:{output}", tmp_path=tmp_path))
    assert inspected["Digest"] == read_text(built["image"]["digest"])
    config = json.loads(
        skopeo("inspect", "--config", f"oci:{output}", tmp_path=tmp_path)
    )
    assert config["config"]["Entrypoint"] == [
        "/usr/bin/python3.13",
        "-m",
        "awslambdaric",
    ]
    assert config["config"]["Cmd"] == ["handler.handle"]
    assert config["rootfs"]["diff_ids"] == built["diff_ids"]
    assert len(config["history"]) == 2
    # a copy re-reads every blob and checks its digest
    skopeo("copy", f"oci:{output}", f"oci:{tmp_path / 'copy'}:app", tmp_path=tmp_path)
    copied = json.loads(
        skopeo("inspect", f"oci:{tmp_path / 'copy'}:app", tmp_path=tmp_path)
    )
    assert copied["Digest"] == inspected["Digest"]


def test_skopeo_reads_the_docker_load_tarball(tmp_path, built):
    output = make_tarball(tmp_path, built, "receipts/app:latest")
    inspected = json.loads(
        skopeo("inspect", f"docker-archive:{output}", tmp_path=tmp_path)
    )
    assert (
        inspected["Layers"] == built["diff_ids"]
    )  # docker-archive names layers by their uncompressed digest
    skopeo(
        "copy",
        f"docker-archive:{output}",
        f"oci:{tmp_path / 'from-tar'}:x",
        tmp_path=tmp_path,
    )


def test_umoci_unpacks_the_layout_with_normalized_files(tmp_path, built):
    umoci = require_tool("umoci")
    output = image_layout(tmp_path, built)
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--rootless", "--image", f"{output}:latest", str(bundle)],
        check=True,
    )
    rootfs = bundle / "rootfs"
    assert (rootfs / "var/task/handler.py").read_bytes().startswith(b"def handle")
    assert os.stat(rootfs / "usr/bin/python3.13").st_mode & 0o7777 == 0o755
    assert os.stat(rootfs / "var/task/handler.py").st_mode & 0o7777 == 0o644
    assert os.stat(rootfs / "tmp").st_mode & 0o7777 == 0o1777
    assert os.readlink(rootfs / "usr/bin/python3") == "python3.13"
    assert os.stat(rootfs / "var/task/handler.py").st_mtime == 0
    runtime_config = read_json(bundle / "config.json")
    assert runtime_config["process"]["args"] == [
        "/usr/bin/python3.13",
        "-m",
        "awslambdaric",
        "handler.handle",
    ]
    assert runtime_config["process"]["cwd"] == "/var/task"
    assert "LANG=C.UTF-8" in runtime_config["process"]["env"]


def test_crane_validates_the_docker_load_tarball(tmp_path, built):
    crane = require_tool("crane")
    output = make_tarball(tmp_path, built, "receipts/app:latest")
    # validate decompresses every layer and checks digests, diff_ids and sizes against the config
    subprocess.run(
        [crane, "validate", "--tarball", output], check=True, capture_output=True
    )


@pytest.fixture
def registry(tmp_path):
    with running_registry(tmp_path) as address:
        yield address


def test_crane_pushes_the_layout_and_validates_it(tmp_path, built, registry):
    crane = require_tool("crane")
    output = image_layout(tmp_path, built)
    reference = f"{registry}/receipts/app:latest"

    def run(*args):
        return subprocess.run(
            [crane, *args], check=True, capture_output=True, text=True
        ).stdout

    run("push", "--insecure", output, reference)
    run("validate", "--insecure", "--remote", reference)
    assert run("digest", "--insecure", reference).strip() == read_text(
        built["image"]["digest"]
    )
    config = json.loads(run("config", "--insecure", reference))
    assert config == read_json(built["image"]["config.json"])


def test_index_layout_is_read_by_skopeo(tmp_path, built):
    arm_base = make_image(
        tmp_path,
        "arm",
        [built["layers"][0][0]],
        "--os",
        "linux",
        "--architecture",
        "arm64",
    )
    images = [built["image"], arm_base]
    index_paths = {
        kind: str(tmp_path / f"index.{kind}")
        for kind in ("json", "descriptor.json", "digest")
    }
    from tools.oci import image as image_tool

    argv = ["index"]
    for paths in images:
        argv += ["--image", paths["descriptor.json"]]
    image_tool.main(
        [
            *argv,
            "--output-index", index_paths["json"],
            "--output-descriptor", index_paths["descriptor.json"],
            "--output-digest", index_paths["digest"],
        ]
    )  # fmt: skip
    blobs = [index_paths["json"]] + [
        paths[kind] for paths in images for kind in ("manifest.json", "config.json")
    ]
    output = str(tmp_path / "index-layout")
    write_layout(output, index_paths["json"], blobs, built["layers"])
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{output}", tmp_path=tmp_path))
    assert raw["mediaType"] == common.OCI_INDEX
    arm = json.loads(
        skopeo(
            "inspect", "--override-arch", "arm64", f"oci:{output}", tmp_path=tmp_path
        )
    )
    assert arm["Architecture"] == "arm64"
    skopeo(
        "copy",
        "--all",
        f"oci:{output}",
        f"oci:{tmp_path / 'copy'}:all",
        tmp_path=tmp_path,
    )
