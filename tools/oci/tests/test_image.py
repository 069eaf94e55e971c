"""Tests of tools/oci/image.py: config and manifest from layer metadata, base images, indexes."""

import json
import os

import pytest

from tools.oci import common, image
from tools.oci.common import UsageError
from tools.oci.tests.oci_testing import (
    make_image,
    make_layer,
    read_bytes,
    read_json,
    read_text,
    sha256_file,
)


@pytest.fixture
def layers(tmp_path):
    """Metadata paths of two small layers."""
    paths = []
    for name in ("runtime", "app"):
        source = tmp_path / f"{name}.txt"
        source.write_bytes(name.encode())
        _, metadata, _ = make_layer(
            tmp_path, name, "--file", f"/{name}.txt", str(source), "--created-by", name
        )
        paths.append(metadata)
    return paths


def test_config_has_every_field(tmp_path, layers):
    paths = make_image(
        tmp_path,
        "img",
        layers,
        "--entrypoint", '["/usr/bin/python3.13", "-m", "awslambdaric"]',
        "--cmd", '["handler.handle"]',
        "--env", '{"LANG": "C.UTF-8", "PATH": "/usr/bin"}',
        "--workdir", "/var/task",
        "--user", "nonroot",
        "--labels", '{"org.opencontainers.image.source": "repo"}',
        "--os", "linux",
        "--architecture", "arm64",
        "--variant", "v8",
    )  # fmt: skip
    config = read_json(paths["config.json"])
    assert config["config"] == {
        "Entrypoint": ["/usr/bin/python3.13", "-m", "awslambdaric"],
        "Cmd": ["handler.handle"],
        "Env": ["LANG=C.UTF-8", "PATH=/usr/bin"],
        "WorkingDir": "/var/task",
        "User": "nonroot",
        "Labels": {"org.opencontainers.image.source": "repo"},
    }
    assert (config["os"], config["architecture"], config["variant"]) == (
        "linux",
        "arm64",
        "v8",
    )
    assert config["created"] == "1970-01-01T00:00:00Z"
    metadata = [read_json(path) for path in layers]
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [layer["diff_id"] for layer in metadata],
    }
    assert [entry["created_by"] for entry in config["history"]] == ["runtime", "app"]


def test_manifest_references_config_and_layers_by_digest(tmp_path, layers):
    paths = make_image(
        tmp_path, "img", layers, "--os", "linux", "--architecture", "amd64"
    )
    manifest = read_json(paths["manifest.json"])
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == common.OCI_MANIFEST
    assert manifest["config"] == {
        "mediaType": common.OCI_CONFIG,
        "digest": sha256_file(paths["config.json"]),
        "size": os.path.getsize(paths["config.json"]),
    }
    assert manifest["layers"] == [read_json(path)["descriptor"] for path in layers]
    descriptor = read_json(paths["descriptor.json"])
    assert descriptor == {
        "mediaType": common.OCI_MANIFEST,
        "digest": sha256_file(paths["manifest.json"]),
        "size": os.path.getsize(paths["manifest.json"]),
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    assert read_text(paths["digest"]) == descriptor["digest"]


def test_same_inputs_give_the_same_bytes(tmp_path, layers):
    args = ("--os", "linux", "--architecture", "amd64", "--env", '{"B": "1", "A": "2"}')
    first = make_image(tmp_path / "1", "img", layers, *args)
    second = make_image(tmp_path / "2", "img", layers, *args)
    for kind in ("config.json", "manifest.json", "digest"):
        assert read_bytes(first[kind]) == read_bytes(second[kind])


def test_image_on_a_base_extends_it(tmp_path, layers):
    base = make_image(
        tmp_path,
        "base",
        layers[:1],
        "--entrypoint", '["/bin/sh"]',
        "--cmd", '["-c", "true"]',
        "--env", '{"PATH": "/usr/bin", "LANG": "C.UTF-8"}',
        "--labels", '{"base": "yes", "shared": "base"}',
        "--workdir", "/",
        "--os", "linux",
        "--architecture", "arm64",
    )  # fmt: skip
    child = make_image(
        tmp_path,
        "child",
        layers[1:],
        "--cmd", '["app.handler"]',
        "--env", '{"PATH": "${PATH}:/var/task/bin", "HOME": "$NOPE"}',
        "--labels", '{"shared": "child"}',
        base=base,
    )  # fmt: skip
    config = read_json(child["config.json"])
    assert config["config"] == {
        "Entrypoint": ["/bin/sh"],
        "Cmd": ["app.handler"],
        "Env": ["PATH=/usr/bin:/var/task/bin", "LANG=C.UTF-8", "HOME=$NOPE"],
        "WorkingDir": "/",
        "Labels": {"base": "yes", "shared": "child"},
    }
    assert config["architecture"] == "arm64"
    base_config = read_json(base["config.json"])
    assert config["rootfs"]["diff_ids"][:1] == base_config["rootfs"]["diff_ids"]
    assert [entry["created_by"] for entry in config["history"]] == ["runtime", "app"]
    manifest, base_manifest = (
        read_json(child["manifest.json"]),
        read_json(base["manifest.json"]),
    )
    assert manifest["layers"][:1] == base_manifest["layers"]
    assert len(manifest["layers"]) == 2


def test_new_entrypoint_drops_the_base_cmd(tmp_path, layers):
    base = make_image(
        tmp_path,
        "base",
        [],
        "--entrypoint",
        '["/a"]',
        "--cmd",
        '["x"]',
        "--os",
        "linux",
        "--architecture",
        "amd64",
    )
    child = make_image(tmp_path, "child", [], "--entrypoint", '["/b"]', base=base)
    assert read_json(child["config.json"])["config"] == {"Entrypoint": ["/b"]}


def test_base_without_history_gets_one_entry_per_layer(tmp_path, layers):
    base = make_image(
        tmp_path, "base", layers, "--os", "linux", "--architecture", "amd64"
    )
    config = read_json(base["config.json"])
    del config["history"]
    with open(base["config.json"], "w") as handle:
        json.dump(config, handle)
    child = make_image(tmp_path, "child", layers[:1], base=base)
    history = read_json(child["config.json"])["history"]
    assert [entry["created_by"] for entry in history] == [
        "layer of the base image"
    ] * 2 + ["runtime"]


def test_docker_format_renames_media_types(tmp_path, layers):
    paths = make_image(
        tmp_path,
        "img",
        layers,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--format",
        "docker",
    )
    manifest = read_json(paths["manifest.json"])
    assert manifest["mediaType"] == common.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == common.DOCKER_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        common.DOCKER_LAYER_GZIP
    }
    # an OCI image on a Docker-format base (like public.ecr.aws/lambda/python) gets OCI names back
    child = make_image(tmp_path, "child", [], base=paths)
    assert {
        layer["mediaType"] for layer in read_json(child["manifest.json"])["layers"]
    } == {common.OCI_LAYER_GZIP}


def test_docker_format_rejects_zstd_and_annotations(tmp_path):
    source = tmp_path / "a"
    source.write_bytes(b"a")
    _, zstd_layer, _ = make_layer(
        tmp_path, "z", "--file", "/a", str(source), "--compression", "zstd"
    )
    platform = ("--os", "linux", "--architecture", "amd64", "--format", "docker")
    with pytest.raises(UsageError, match="no Docker v2 equivalent"):
        make_image(tmp_path, "img", [zstd_layer], *platform)
    with pytest.raises(UsageError, match="no annotations"):
        make_image(tmp_path, "img", [], *platform, "--annotations", '{"a": "b"}')


def test_annotations_go_to_the_manifest(tmp_path):
    paths = make_image(
        tmp_path,
        "img",
        [],
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--annotations",
        '{"a": "b"}',
    )
    assert read_json(paths["manifest.json"])["annotations"] == {"a": "b"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the image has no os: set the os attribute"),
        (["--os", "linux"], "the image has no architecture"),
    ],
)
def test_platform_is_required(tmp_path, args, message):
    with pytest.raises(UsageError, match=message):
        make_image(tmp_path, "img", [], *args)


def test_platform_must_match_the_base(tmp_path):
    base = make_image(tmp_path, "base", [], "--os", "linux", "--architecture", "arm64")
    with pytest.raises(
        UsageError, match="architecture = 'amd64' but the base image is 'arm64'"
    ):
        make_image(tmp_path, "child", [], "--architecture", "amd64", base=base)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--entrypoint", "/bin/sh"),
        ("--cmd", '{"a": 1}'),
        ("--env", '["A=1"]'),
        ("--labels", '{"a": 1}'),
    ],
)
def test_malformed_json_arguments_are_rejected(tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit):
        make_image(
            tmp_path, "img", [], "--os", "linux", "--architecture", "amd64", flag, value
        )
    assert "is not a JSON" in capsys.readouterr().err


def make_index(tmp_path, descriptors, *args):
    paths = {
        kind: str(tmp_path / f"index.{kind}")
        for kind in ("json", "descriptor.json", "digest")
    }
    argv = ["index"]
    for descriptor in descriptors:
        argv += ["--image", descriptor]
    argv += [
        *args,
        "--output-index",
        paths["json"],
        "--output-descriptor",
        paths["descriptor.json"],
    ]
    image.main([*argv, "--output-digest", paths["digest"]])
    return paths


def test_index_lists_each_platform(tmp_path, layers):
    amd64 = make_image(
        tmp_path, "amd64", layers, "--os", "linux", "--architecture", "amd64"
    )
    arm64 = make_image(
        tmp_path,
        "arm64",
        layers,
        "--os",
        "linux",
        "--architecture",
        "arm64",
        "--variant",
        "v8",
    )
    paths = make_index(tmp_path, [amd64["descriptor.json"], arm64["descriptor.json"]])
    index = read_json(paths["json"])
    assert index["mediaType"] == common.OCI_INDEX
    assert [entry["platform"] for entry in index["manifests"]] == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    assert [entry["digest"] for entry in index["manifests"]] == [
        read_text(amd64["digest"]),
        read_text(arm64["digest"]),
    ]
    assert read_json(paths["descriptor.json"])["digest"] == sha256_file(paths["json"])


def test_index_rejects_two_images_of_one_platform(tmp_path, layers):
    first = make_image(
        tmp_path, "a", layers, "--os", "linux", "--architecture", "amd64"
    )
    second = make_image(
        tmp_path, "b", layers[:1], "--os", "linux", "--architecture", "amd64"
    )
    with pytest.raises(
        UsageError, match="several images of the index have the platform"
    ):
        make_index(tmp_path, [first["descriptor.json"], second["descriptor.json"]])


def test_expand_env_keeps_order_and_literal_unknowns():
    assert image.expand_env(["A=1", "B=2"], [("B", "$A-$B"), ("C", "${A}x$$")]) == [
        "A=1",
        "B=1-2",
        "C=1x$$",
    ]
