"""The six handler images for linux/arm64 and linux/amd64: Lambda configuration, and what skopeo,
umoci and crane (Debian's) make of their OCI layouts and of a `docker load` tarball."""

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.images.images import ENTRYPOINT, HANDLERS, Image, image, read_tar_text
from tools.registry.local_registry import LocalRegistry

ARCHITECTURES = ("arm64", "amd64")
ALL = [(arch, name) for arch in ARCHITECTURES for name in HANDLERS]
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# //base:lambda's layers, then the handler's: one history entry each, least-changing first.
CREATED_BY = [
    "tar rootfs_{arch}.tar of //base:rootfs_{arch}",
    "py_layer //base:site_packages_ml (third-party packages)",
    "py_layer //base:site_packages_chromadb (third-party packages)",
    "py_layer //base:site_packages_aws (third-party packages)",
    "py_layer //base:site_packages_rest (third-party packages)",
    "py_layer //base:first_party (first-party packages)",
    "oci_layer //handlers/{name}:image_files",
]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("OCI_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(
                f"{name} is not installed (tools/buildenv/packages.txt installs it)"
            )
        pytest.skip(f"{name} is not installed")
    return path


def run(*command: str, **kwargs) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, **kwargs
    )
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode}):\n{result.stderr}"
    )
    return result.stdout


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def expected_created() -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_lambda_configuration(arch, name):
    config = image(arch, name).config
    assert config["config"]["Entrypoint"] == ENTRYPOINT
    assert config["config"]["Cmd"] == ["handler.handler"]
    assert config["config"]["WorkingDir"] == "/var/task"
    env = config["config"]["Env"]
    assert "LANG=C.UTF-8" in env
    assert "LAMBDA_TASK_ROOT=/var/task" in env
    assert len({entry.split("=", 1)[0] for entry in env}) == len(env), (
        f"a variable is set twice: {env}"
    )
    assert "User" not in config["config"], (
        "Lambda picks the user; the image must run as any"
    )
    assert (config["os"], config["architecture"]) == ("linux", arch)
    assert config["created"] == expected_created()


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_one_history_entry_per_layer(arch, name):
    found = image(arch, name)
    history = found.config["history"]
    assert [entry for entry in history if entry.get("empty_layer")] == []
    assert (
        len(history)
        == len(found.layers)
        == len(found.config["rootfs"]["diff_ids"])
        == len(CREATED_BY)
    )
    assert [entry["created_by"] for entry in history] == [
        text.format(arch=arch, name=name) for text in CREATED_BY
    ]
    assert {entry["created"] for entry in history} == {found.config["created"]}


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_manifest_describes_the_config_and_layers(arch, name):
    found = image(arch, name)
    manifest = found.manifest
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config_bytes = found.blob(manifest["config"]["digest"]).read_bytes()
    assert sha256(config_bytes) == manifest["config"]["digest"]
    assert json.loads(config_bytes) == found.config
    assert found.digest == sha256(found.manifest_bytes)
    for layer in manifest["layers"]:
        assert layer["mediaType"] == LAYER_MEDIA_TYPE
        assert found.blob(layer["digest"]).stat().st_size == layer["size"]
    index = json.loads((found.layout / "index.json").read_text())
    assert [entry["digest"] for entry in index["manifests"]] == [found.digest]


def test_the_lambda_targets_are_built_for_the_lambda_platform():
    """//handlers/<name>:image (what `bazel build //handlers/...` and `bazel run //:push` use) is the
    linux/arm64 image unless --config=amd64 is given."""
    arch = os.environ["LAMBDA_ARCHITECTURE"]
    for name in HANDLERS:
        assert image("lambda", name).digest == image(arch, name).digest, name
        assert image("lambda", name).config["architecture"] == arch


def test_only_pure_python_layers_are_shared_across_architectures():
    for name in HANDLERS:
        arm64, amd64 = image("arm64", name), image("amd64", name)
        assert arm64.layers[0] != amd64.layers[0], (
            "the Debian runtime is per architecture"
        )
        assert arm64.layers[1] != amd64.layers[1], (
            "numpy, onnxruntime and tokenizers are per architecture"
        )
        assert arm64.layers[-2] == amd64.layers[-2], (
            "first-party packages are pure Python"
        )
        assert arm64.layers[-1] == amd64.layers[-1], "the handler layer is one .py file"
        assert arm64.digest != amd64.digest


# skopeo


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory):
    binary = require_tool("skopeo")
    directory = tmp_path_factory.mktemp("skopeo")
    policy = directory / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {**os.environ, "TMPDIR": str(directory)}
    return lambda *args: run(binary, "--policy", str(policy), *args, env=env)


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_skopeo_reads_and_copies_the_layout(arch, name, skopeo, tmp_path):
    found = image(arch, name)
    assert (
        skopeo("inspect", "--raw", f"oci:{found.layout}").encode()
        == found.manifest_bytes
    )
    inspected = json.loads(skopeo("inspect", f"oci:{found.layout}"))
    assert inspected["Digest"] == found.digest
    assert inspected["Architecture"] == arch
    assert inspected["Layers"] == [layer["digest"] for layer in found.layers]
    copy = tmp_path / "copy"
    skopeo("copy", "--quiet", f"oci:{found.layout}", f"dir:{copy}")
    assert (copy / "manifest.json").read_bytes() == found.manifest_bytes
    for layer in (
        found.layers
    ):  # skopeo verified each digest while copying; the blobs must all be there
        assert (copy / layer["digest"].split(":", 1)[1]).stat().st_size == layer["size"]
    shutil.rmtree(copy)


# umoci


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_umoci_reads_the_history(arch, name):
    found = image(arch, name)
    stat = json.loads(
        run(
            require_tool("umoci"), "stat", "--json", "--image", f"{found.layout}:latest"
        )
    )
    assert [entry["layer"]["digest"] for entry in stat["history"]] == [
        layer["digest"] for layer in found.layers
    ]
    assert [entry["diff_id"] for entry in stat["history"]] == found.config["rootfs"][
        "diff_ids"
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_umoci_unpacks_a_runnable_bundle(arch, tmp_path):
    found = image(arch, "list_pending_batches")
    bundle = tmp_path / "bundle"
    run(
        require_tool("umoci"),
        "unpack",
        "--rootless",
        "--image",
        f"{found.layout}:latest",
        str(bundle),
    )
    rootfs = bundle / "rootfs"
    interpreter = rootfs / "usr/bin/python3.13"
    assert interpreter.is_file() and not interpreter.is_symlink()
    assert (rootfs / "var/task/handler.py").read_bytes() == Path(
        "handlers/list_pending_batches/handler.py"
    ).read_bytes()
    assert (
        rootfs / "usr/local/lib/python3.13/dist-packages/awslambdaric/__main__.py"
    ).is_file()
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ENTRYPOINT + ["handler.handler"]
    assert process["cwd"] == "/var/task"
    assert "LAMBDA_TASK_ROOT=/var/task" in process["env"]
    shutil.rmtree(bundle)


# crane


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on a loopback port it picks itself; yields host:port."""
    require_tool("docker-registry")
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as server:
        yield server.address


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_crane_pushes_and_validates_the_layout(arch, name, registry):
    crane = require_tool("crane")
    found = image(arch, name)
    reference = f"{registry}/{name.replace('_', '-')}:{arch}"
    run(crane, "push", "--insecure", str(found.layout), reference)
    # Without --fast crane downloads every layer and checks its digest and diff_id; the six images
    # share all layers but the handler's, so one image per architecture gets the full check.
    fast = [] if name == HANDLERS[0] else ["--fast"]
    run(crane, "validate", "--insecure", *fast, "--remote", reference)
    assert run(crane, "digest", "--insecure", reference).strip() == found.digest
    assert json.loads(run(crane, "config", "--insecure", reference)) == found.config
    assert (
        run(crane, "manifest", "--insecure", reference).encode() == found.manifest_bytes
    )


def test_crane_and_skopeo_accept_the_docker_load_tarball(skopeo):
    """//handlers/list_pending_batches:image.load, what `bazel run` hands to docker or podman."""
    tarball = Path("handlers/list_pending_batches/image.load/tarball.tar")
    lambda_image: Image = image("lambda", "list_pending_batches")
    run(require_tool("crane"), "validate", "--tarball", str(tarball))
    inspected = json.loads(skopeo("inspect", f"docker-archive:{tarball}"))
    assert inspected["Layers"] == lambda_image.config["rootfs"]["diff_ids"]
    assert inspected["Architecture"] == os.environ["LAMBDA_ARCHITECTURE"]
    docker_manifest = json.loads(read_tar_text(tarball, "manifest.json"))
    assert docker_manifest[0]["RepoTags"] == [
        "receipt-lambdas/list_pending_batches:latest"
    ]
