"""Checks the example images that tools/oci/tests/BUILD.bazel builds with the rules (bazel test only)."""

import json
import os
import subprocess

import pytest

from tools.oci import common
from tools.oci.tests.oci_testing import (
    read_json,
    read_text,
    require_tool,
    running_registry,
    tar_members,
)

if "TEST_SRCDIR" not in os.environ:
    pytest.skip(
        "checks Bazel-built images: run it with bazel test", allow_module_level=True
    )

PACKAGE = "tools/oci/tests"


def output(*parts):
    return os.path.join(PACKAGE, *parts)


def layout_blob(layout, digest):
    return os.path.join(layout, "blobs", "sha256", common.digest_hex(digest))


def image_layers(name):
    """{path: (TarInfo, content)} per layer of an image, read from its layout."""
    manifest = read_json(output(name, "manifest.json"))
    return [
        tar_members(layout_blob(output(name, "layout"), layer["digest"]))
        for layer in manifest["layers"]
    ]


def test_config_has_the_attributes_and_base_settings():
    config = read_json(output("app_image", "config.json"))
    assert config["config"] == {
        "Entrypoint": ["/usr/local/bin/run"],
        "Cmd": ["greet.handle"],
        "Env": ["LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/var/task/bin"],
        "WorkingDir": "/var/task",
        "Labels": {"example": "yes"},
    }
    assert config["os"] == "linux"
    assert config["architecture"] == os.environ["EXPECTED_ARCHITECTURE"]
    assert config["created"] == "1970-01-01T00:00:00Z"
    assert [entry["created_by"] for entry in config["history"]] == [
        "oci_layer //tools/oci/tests:files_layer",
        "tar rootfs.tar of //tools/oci/tests:rootfs_tar",
        "py_layer //tools/oci/tests:third_party_layer (third-party packages)",
        "py_layer //tools/oci/tests:first_party_layer (first-party packages)",
    ]
    manifest = read_json(output("app_image", "manifest.json"))
    assert manifest["annotations"] == {"org.opencontainers.image.title": "example"}
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == 4


def test_the_image_shares_its_base_layers():
    base = read_json(output("base_image", "manifest.json"))
    app = read_json(output("app_image", "manifest.json"))
    assert app["layers"][:2] == base["layers"]


def test_same_inputs_give_the_same_digest():
    assert read_text(output("app_image", "digest")) == read_text(
        output("app_image_again", "digest")
    )
    assert (
        read_text(output("app_image", "digest"))
        == read_json(output("app_image", "descriptor.json"))["digest"]
    )


def test_layers_hold_normalized_files_where_the_rules_put_them():
    files, rootfs, third_party, first_party = image_layers("app_image")
    modes = {name: info.mode for name, (info, _) in files.items()}
    assert files["etc/hello.txt"][1] == b"hello from a layer\n"
    assert modes["etc/hello.txt"] == 0o644
    assert modes["usr/local/bin/run"] == 0o755
    assert modes["tmp"] == 0o1777
    assert files["usr/bin/run"][0].linkname == "../local/bin/run"
    assert "opt/example/static/a.txt" in files
    # the careless tar: setuid, 0600, uid 1000 and current mtimes are gone; the hard link is kept
    assert rootfs["usr/bin/another-name"][0].mode == 0o755
    assert rootfs["usr/bin/tool"][0].islnk()
    assert rootfs["usr/share/doc/notes"][0].mode == 0o644
    site = "usr/local/lib/python3.13/dist-packages/"
    assert site + "jmespath/__init__.py" in third_party
    assert any(
        name.startswith(site + "jmespath-") and name.endswith(".dist-info/RECORD")
        for name in third_party
    )
    assert not any("greet" in name for name in third_party)
    assert [name for name, (info, _) in first_party.items() if info.isreg()] == [
        "var/task/greet/__init__.py",
        "var/task/greet/__pycache__/__init__.cpython-313.pyc",
    ]
    # py_layer compiles by default: unchecked-hash pycs naming the image path of their source
    pyc = first_party["var/task/greet/__pycache__/__init__.cpython-313.pyc"][1]
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    assert b"/var/task/greet/__init__.py" in pyc
    assert site + "jmespath/__pycache__/__init__.cpython-313.pyc" in third_party
    for layer in (files, rootfs, third_party, first_party):
        assert list(layer) == sorted(layer)
        for info, _ in layer.values():
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
                0,
                0,
                0,
                "",
                "",
            )


def skopeo(*args, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [require_tool("skopeo"), "--policy", str(policy), *args]
    return subprocess.run(
        command, check=True, capture_output=True, text=True, env=env
    ).stdout


def test_skopeo_accepts_the_layout(tmp_path):
    layout = output("app_image", "layout")
    inspected = json.loads(skopeo("inspect", f"oci:{layout}", tmp_path=tmp_path))
    assert inspected["Digest"] == read_text(output("app_image", "digest"))
    skopeo("copy", f"oci:{layout}", f"oci:{tmp_path / 'copy'}:app", tmp_path=tmp_path)


def test_umoci_unpacks_the_layout(tmp_path):
    umoci = require_tool("umoci")
    bundle = tmp_path / "bundle"
    layout = output("app_image", "layout")
    subprocess.run(
        [umoci, "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
        check=True,
    )
    rootfs = bundle / "rootfs"
    assert (
        (rootfs / "var/task/greet/__init__.py")
        .read_text()
        .startswith('"""A first-party package')
    )
    assert (
        rootfs / "usr/local/lib/python3.13/dist-packages/jmespath/__init__.py"
    ).is_file()
    assert (
        os.stat(rootfs / "usr/bin/tool").st_ino
        == os.stat(rootfs / "usr/bin/another-name").st_ino
    )
    process = read_json(bundle / "config.json")["process"]
    assert process["args"] == ["/usr/local/bin/run", "greet.handle"]
    assert process["cwd"] == "/var/task"


def test_crane_validates_the_layout_in_a_registry(tmp_path):
    crane = require_tool("crane")
    with running_registry(tmp_path) as address:
        reference = f"{address}/example/app:latest"

        def run(*args):
            return subprocess.run(
                [crane, *args], check=True, capture_output=True, text=True
            ).stdout

        run("push", "--insecure", output("app_image", "layout"), reference)
        run("validate", "--insecure", "--remote", reference)
        assert run("digest", "--insecure", reference).strip() == read_text(
            output("app_image", "digest")
        )
        assert json.loads(run("config", "--insecure", reference)) == read_json(
            output("app_image", "config.json")
        )


def test_load_tarball_is_valid(tmp_path):
    tarball = output("app_load", "tarball.tar")
    subprocess.run(
        [require_tool("crane"), "validate", "--tarball", tarball],
        check=True,
        capture_output=True,
    )
    inspected = json.loads(
        skopeo("inspect", f"docker-archive:{tarball}", tmp_path=tmp_path)
    )
    assert (
        inspected["Layers"]
        == read_json(output("app_image", "config.json"))["rootfs"]["diff_ids"]
    )


def test_index_has_an_image_per_platform(tmp_path):
    index = read_json(output("app_index", "index.json"))
    platforms = [entry["platform"] for entry in index["manifests"]]
    assert platforms == [
        {"os": "linux", "architecture": "arm64"},
        {"os": "linux", "architecture": "amd64"},
    ]
    layout = output("app_index", "layout")
    for entry in index["manifests"]:
        manifest = read_json(layout_blob(layout, entry["digest"]))
        config = read_json(layout_blob(layout, manifest["config"]["digest"]))
        assert config["architecture"] == entry["platform"]["architecture"]
    skopeo(
        "copy",
        "--all",
        f"oci:{layout}",
        f"oci:{tmp_path / 'copy'}:all",
        tmp_path=tmp_path,
    )
