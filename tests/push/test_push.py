"""The push tool against real registries: Debian's docker-registry (htpasswd and token auth),
a fault-injecting proxy in front of it, and moto's ECR API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.push import support
from tools.registry import client
from tools.registry.local_registry import answers

HANDLERS = support.HANDLERS


def test_first_push_uploads_everything_and_a_second_push_nothing(
    basic_registry, images, run_push
):
    built = images.build_all()
    first = run_push("--registry", basic_registry.address, *support.image_args(built))
    assert first.code == 0, first.stderr
    results = first.by_name()
    shared = images.base, images.deps
    # The shared base and dependency layers go up once and are mounted into the other five repositories.
    assert sum(r.uploaded for r in results.values()) == sum(
        len(layer) for layer in shared
    ) + sum(
        image.config_size + image.layer_sizes[2] + len(image.manifest)
        for image in built.values()
    )
    assert sum(r.mounted for r in results.values()) == 5 * sum(
        len(layer) for layer in shared
    )
    for name, image in built.items():
        result = results[name]
        assert result.uploaded + result.mounted == image.blob_bytes + len(
            image.manifest
        )
        assert result.image.digest == image.digest
        assert (
            basic_registry.client().manifest_digest(name, image.digest) == image.digest
        )

    second = run_push("--registry", basic_registry.address, *support.image_args(built))
    assert second.code == 0, second.stderr
    for name, result in second.by_name().items():
        assert (result.uploaded, result.mounted, result.skipped) == (
            0,
            0,
            built[name].blob_bytes,
        )
    assert "uploaded 0 B, mounted 0 B" in second.stdout


def test_one_handler_edit_uploads_only_its_handler_layer_config_and_manifest(
    open_registry, images, run_push
):
    run = run_push(
        "--registry", open_registry.address, *support.image_args(images.build_all())
    )
    assert run.code == 0, run.stderr

    images.sources["embed_lines"] += b"# edited\n"
    rebuilt = images.build_all(generation=1)
    again = run_push("--registry", open_registry.address, *support.image_args(rebuilt))
    assert again.code == 0, again.stderr
    edited = rebuilt["embed_lines"]
    results = again.by_name()
    config_digest = json.loads(edited.manifest)["config"]["digest"]
    assert sorted(results["embed_lines"].uploaded_blobs) == sorted(
        [config_digest, edited.layer_digests[2]]
    )
    assert results["embed_lines"].uploaded == edited.config_size + edited.layer_sizes[
        2
    ] + len(edited.manifest)
    assert results["embed_lines"].skipped == len(images.base) + len(images.deps)
    for name in set(HANDLERS) - {"embed_lines"}:
        assert results[name].uploaded == 0, name
        assert not results[name].manifest_uploaded


def test_pushed_images_pull_back_with_skopeo_under_the_local_digest(
    basic_registry, images, run_push, tmp_path
):
    built = {name: images.build(name) for name in HANDLERS[:2]}
    run = run_push(
        "--registry", basic_registry.address, "--tag", "v1", *support.image_args(built)
    )
    assert run.code == 0, run.stderr
    creds = f"{basic_registry.user}:{basic_registry.password}"
    for name, image in built.items():
        for number, reference in enumerate((f"@{image.digest}", ":v1")):
            pulled = tmp_path / f"pulled-{name}-{number}"
            support.skopeo_copy(
                f"docker://{basic_registry.address}/{name}{reference}",
                f"oci:{pulled}",
                "--src-tls-verify=false",
                f"--src-creds={creds}",
            )
            index = json.loads((pulled / "index.json").read_text())
            assert [entry["digest"] for entry in index["manifests"]] == [image.digest]
            local_blobs = sorted(
                p.name for p in (image.layout / "blobs" / "sha256").iterdir()
            )
            assert (
                sorted(p.name for p in (pulled / "blobs" / "sha256").iterdir())
                == local_blobs
            )


def test_token_auth_push_then_anonymous_pull(
    token_registry, token_server, images, run_push, tmp_path
):
    image = images.build("ocr_result")
    run = run_push(
        "--registry", token_registry.address, f"--image=ocr_result={image.layout}"
    )
    assert run.code == 0, run.stderr
    pushes = [
        a
        for claims in token_server.issued
        for a in claims["access"]
        if "push" in a["actions"]
    ]
    assert pushes and all(claims["sub"] == "pusher" for claims in token_server.issued)

    anonymous = client.Registry(
        client.parse_registry(token_registry.address), lambda: None
    )
    body, _, digest = anonymous.get_manifest("ocr_result", image.digest)
    assert digest == image.digest and body == image.manifest
    layer = image.layer_digests[2]
    anonymous.fetch_blob("ocr_result", layer, tmp_path / "layer", image.layer_sizes[2])
    assert (tmp_path / "layer").read_bytes() == (
        image.layout / "blobs" / "sha256" / layer[7:]
    ).read_bytes()
    # Anonymous callers get pull only, so pushing without credentials is refused with a clear message.
    with pytest.raises(
        client.AuthError, match="rejected putting manifest .* anonymously"
    ):
        anonymous.put_manifest(
            "ocr_result", "stolen", image.manifest, client.OCI_MANIFEST
        )


def test_injected_5xx_429_and_dropped_connections_are_retried(
    open_registry, images, run_push
):
    proxy = support.FaultProxy(open_registry.server.port)
    try:
        proxy.faults = [
            support.Fault("HEAD", "/blobs/", "429", times=1),
            support.Fault("PATCH", "/blobs/uploads/", "drop", times=2),
            support.Fault("PUT", "/blobs/uploads/", "500", times=2),
            support.Fault("POST", "/blobs/uploads/", "503", times=1),
            support.Fault("PUT", "/manifests/sha256:", "502", times=1),
        ]
        built = {name: images.build(name) for name in HANDLERS[:2]}
        run = run_push(
            "--registry",
            "registry.test:443",
            "--registry-endpoint",
            proxy.url,
            "--retries",
            "6",
            *support.image_args(built),
        )
        assert run.code == 0, run.stderr
        assert all(fault.hits == fault.times for fault in proxy.faults), proxy.faults
    finally:
        proxy.close()
    for name, image in built.items():
        assert (
            open_registry.client().manifest_digest(name, image.digest) == image.digest
        )
        for digest, size in zip(image.layer_digests, image.layer_sizes, strict=True):
            assert open_registry.client().blob_size(name, digest) == size
    assert {r.image.digest for r in run.results} == {
        image.digest for image in built.values()
    }


def test_a_registry_that_keeps_failing_fails_the_push_clearly_and_sets_no_tag(
    open_registry, images, run_push
):
    proxy = support.FaultProxy(open_registry.server.port)
    try:
        proxy.faults = [support.Fault("PUT", "/manifests/", "500", times=1000)]
        image = images.build("similarity")
        run = run_push(
            "--registry",
            f"http://127.0.0.1:{proxy.port}",
            "--retries",
            "1",
            "--tag",
            "release",
            f"--image=similarity={image.layout}",
        )
    finally:
        proxy.close()
    assert run.code == 1
    assert (
        "pushing image similarity to" in run.stderr and "putting manifest" in run.stderr
    )
    assert "HTTP 500" in run.stderr and "Traceback" not in run.stderr
    regclient = open_registry.client()
    assert regclient.manifest_digest("similarity", "release") is None
    assert regclient.manifest_digest("similarity", image.digest) is None
    assert not any(
        method == "PUT" and "/manifests/release" in path
        for method, path in proxy.requests
    )


def test_a_blob_that_never_uploads_names_the_image_and_the_blob(
    open_registry, images, run_push
):
    proxy = support.FaultProxy(open_registry.server.port)
    try:
        proxy.faults = [support.Fault("PATCH", "/blobs/uploads/", "drop", times=1000)]
        image = images.build("compaction")
        run = run_push(
            "--registry",
            f"http://127.0.0.1:{proxy.port}",
            "--retries",
            "1",
            "--tag",
            "release",
            f"--image=compaction={image.layout}",
        )
    finally:
        proxy.close()
    assert run.code == 1
    base_digest = image.layer_digests[0]
    assert (
        f"pushing image compaction to 127.0.0.1:{proxy.port}/compaction failed"
        in run.stderr
    )
    assert (
        f"blob {base_digest}" in run.stderr and "failed after 2 attempts" in run.stderr
    )
    assert open_registry.client().manifest_digest("compaction", "release") is None


def test_wrong_credentials_give_one_clear_error(
    basic_registry, images, run_push, tmp_path
):
    support.docker_config(
        tmp_path / "home" / "docker", basic_registry.address, "pusher", "wrong"
    )
    run = run_push(
        "--registry",
        basic_registry.address,
        f"--image=x={images.build('similarity').layout}",
    )
    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert (
        "rejected" in lines[0]
        and "as pusher" in lines[0]
        and "docker login" in lines[0]
    )


def test_wrong_token_credentials_give_one_clear_error(
    token_registry, images, run_push, tmp_path
):
    support.docker_config(
        tmp_path / "home" / "docker", token_registry.address, "pusher", "wrong"
    )
    run = run_push(
        "--registry",
        token_registry.address,
        f"--image=x={images.build('similarity').layout}",
    )
    assert run.code == 2
    assert run.stderr.count("\n") == 1 and "refused the credentials" in run.stderr


def test_missing_credentials_for_a_basic_auth_registry(
    basic_registry, images, run_push, tmp_path
):
    (tmp_path / "home" / "docker" / "config.json").unlink()
    run = run_push(
        "--registry",
        basic_registry.address,
        f"--image=x={images.build('similarity').layout}",
    )
    assert run.code == 2
    assert "requires a user name and password and none were found" in run.stderr


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ("http//bad host", "malformed"),
        ("bad_host!", "invalid host name"),
        ("ftp://registry.example.com", "only http:// and https://"),
        ("registry.example.com:99999", "invalid port"),
        ("registry.example.com/some/path", "malformed"),
        ("user:pw@registry.example.com", "malformed"),
    ],
)
def test_malformed_registry_gives_one_clear_error(registry, message, images, run_push):
    run = run_push(
        "--registry", registry, f"--image=x={images.build('similarity').layout}"
    )
    assert run.code == 2
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


def test_a_registry_that_is_not_running_is_one_clear_error(images, run_push):
    image = images.build("similarity")
    with support.refused_port() as port:
        run = run_push(
            "--verbose", "--registry", f"127.0.0.1:{port}", f"--image=x={image.layout}"
        )
    assert run.code == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "connection refused" in run.stderr and "is running" in run.stderr
    assert "retrying" not in run.stderr  # no long retry loop for a wrong address


@pytest.fixture
def moto_ecr(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    yield server
    server.stop()


ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


@pytest.fixture
def ecr_registry(tmp_path):
    """docker-registry that accepts the password moto's get_authorization_token hands out."""
    root = tmp_path / "ecr-registry"
    root.mkdir()
    (root / "htpasswd").write_text(
        support.htpasswd_line("AWS", "123456789012-auth-token") + "\n"
    )
    with support.registry(
        root, {"htpasswd": {"realm": "ecr", "path": str(root / "htpasswd")}}
    ) as server:
        yield server


def test_ecr_unknown_repository_needs_create_repositories(
    moto_ecr, ecr_registry, images, run_push
):
    image = images.build("receipt_upload")
    where = [
        "--registry",
        ECR,
        "--registry-endpoint",
        ecr_registry.url,
        "--repository-prefix",
        "receipts/",
    ]
    small_chunks = run_push(*where, f"--image=receipt_upload={image.layout}")
    assert small_chunks.code == 2 and "at least 5 MiB" in small_chunks.stderr
    where += ["--chunk-size", str(5 << 20)]
    refused = run_push(*where, f"--image=receipt_upload={image.layout}")
    assert refused.code == 2
    assert (
        "repository receipts/receipt_upload does not exist in " + ECR in refused.stderr
    )
    assert "--create-repositories" in refused.stderr
    assert not (ecr_registry.root / "storage").exists()  # nothing was uploaded

    created = run_push(
        *where,
        "--create-repositories",
        "--immutable-tags",
        f"--image=receipt_upload={image.layout}",
    )
    assert created.code == 0, created.stderr
    assert "created ECR repository receipts/receipt_upload" in created.stdout
    described = (
        boto3.session.Session()
        .client("ecr")
        .describe_repositories(repositoryNames=["receipts/receipt_upload"])
    )
    repository = described["repositories"][0]
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repository["imageTagMutability"] == "IMMUTABLE"
    result = created.results[0]
    assert result.image.digest == image.digest
    assert result.uploaded == image.blob_bytes + len(image.manifest)
    aws = client.Credentials("AWS", "123456789012-auth-token", "test")
    stored = client.Registry(
        client.parse_registry(ECR, endpoint=ecr_registry.url), lambda: aws
    )
    assert (
        stored.manifest_digest("receipts/receipt_upload", image.digest) == image.digest
    )


def test_ecr_without_aws_credentials_is_a_clear_error(
    moto_ecr, ecr_registry, images, run_push, monkeypatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    image = images.build("receipt_upload")
    run = run_push(
        "--registry",
        ECR,
        "--registry-endpoint",
        ecr_registry.url,
        "--chunk-size",
        str(5 << 20),
        f"--image=fn={image.layout}",
    )
    assert run.code == 2
    assert "no AWS credentials found" in run.stderr


def test_dry_run_reports_what_would_upload_and_uploads_nothing(
    open_registry, images, run_push
):
    built = images.build_all()
    run = run_push(
        "--registry",
        open_registry.address,
        "--dry-run",
        "--tag",
        "v1",
        *support.image_args(built),
    )
    assert run.code == 0, run.stderr
    assert "WOULD UPLOAD" in run.stdout
    total = sum(r.uploaded + r.mounted for r in run.results)
    assert total == sum(
        image.blob_bytes + len(image.manifest) for image in built.values()
    )
    catalog = open_registry.client().request("GET", "/v2/_catalog", scopes=())
    assert json.loads(catalog.body)["repositories"] == []


def test_table_and_references_json_for_iac(open_registry, images, run_push, tmp_path):
    built = {name: images.build(name) for name in HANDLERS[:3]}
    output = tmp_path / "out" / "references.json"
    args = [
        "--registry",
        open_registry.address,
        "--tag",
        "v7",
        "--output-json",
        str(output),
    ]
    run = run_push(*args, *support.image_args(built))
    assert run.code == 0, run.stderr
    references = json.loads(output.read_text())
    assert set(references["images"]) == set(built)
    for name, image in built.items():
        entry = references["images"][name]
        assert entry["reference"] == f"{open_registry.address}/{name}@{image.digest}"
        assert entry["tags"] == ["v7"] and entry["platform"] == "linux/arm64"
        line = next(
            line for line in run.stdout.splitlines() if line.startswith(name + " ")
        )
        assert entry["reference"] in line and "v7" in line
    first = output.read_bytes()
    assert run_push(*args, *support.image_args(built)).code == 0
    assert output.read_bytes() == first  # no timestamps or timings: IaC sees no change


def test_registry_from_flag_then_environment_then_config_file(
    images, run_push, tmp_path, monkeypatch
):
    image = images.build("similarity")
    with (
        support.registry(tmp_path / "a") as from_config,
        support.registry(tmp_path / "b") as from_environment,
        support.registry(tmp_path / "c") as from_flag,
    ):
        config = tmp_path / "push.toml"
        config.write_text(
            f'registry = "{from_config.address}"\nrepository_prefix = "team/"\n'
        )
        base = [
            "--config",
            str(config),
            f"--image=similarity={image.layout}",
            "--dry-run",
        ]
        assert run_push(*base).results[0].repository == "team/similarity"
        assert from_config.address in run_push(*base).stdout
        monkeypatch.setenv("PUSH_REGISTRY", from_environment.address)
        monkeypatch.setenv("PUSH_REPOSITORY_PREFIX", "env/")
        run = run_push(*base)
        assert (
            from_environment.address in run.stdout
            and run.results[0].repository == "env/similarity"
        )
        run = run_push(
            *base, "--registry", from_flag.address, "--repository", "flag/repo"
        )
        assert f"{from_flag.address}/flag/repo@" in run.stdout


def test_bad_config_file_is_a_clear_error(images, run_push, tmp_path):
    config = tmp_path / "push.toml"
    config.write_text('registy = "typo.example.com"\n')
    run = run_push(
        "--config", str(config), f"--image=x={images.build('similarity').layout}"
    )
    assert run.code == 2 and "unknown key 'registy'" in run.stderr


def test_default_tag_is_the_git_commit_of_a_clean_tree(
    open_registry, images, run_push, tmp_path
):
    workspace = tmp_path
    git = [
        "git",
        "-C",
        str(workspace),
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
    ]
    subprocess.run([*git, "init", "-q"], check=True)
    (workspace / "handler.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "handler.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "initial"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    image = images.build("similarity")
    args = ["--registry", open_registry.address, f"--image=similarity={image.layout}"]

    clean = run_push(*args, "--latest")
    assert clean.results[0].tags == [commit, "latest"]
    assert open_registry.client().manifest_digest("similarity", commit) == image.digest

    (workspace / "handler.py").write_text("x = 2\n")
    dirty = run_push(*args)
    assert dirty.results[0].tags == [] and "uncommitted changes" in dirty.stdout


def test_a_layout_with_several_platforms_needs_platform(
    open_registry, tmp_path, run_push
):
    layer = support.layer_bytes({"var/task/handler.py": b"x = 1\n"})
    arm = support.write_image(tmp_path / "multi", [layer], architecture="arm64")
    amd = support.write_image(tmp_path / "amd", [layer], architecture="amd64")
    for blob in (amd.layout / "blobs" / "sha256").iterdir():
        (tmp_path / "multi" / "blobs" / "sha256" / blob.name).write_bytes(
            blob.read_bytes()
        )
    index = json.loads((tmp_path / "multi" / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": client.OCI_MANIFEST,
            "digest": amd.digest,
            "size": len(amd.manifest),
        }
    )
    (tmp_path / "multi" / "index.json").write_text(json.dumps(index))

    args = ["--registry", open_registry.address, f"--image=fn={tmp_path / 'multi'}"]
    ambiguous = run_push(*args)
    assert (
        ambiguous.code == 2
        and "holds several images (linux/amd64, linux/arm64)" in ambiguous.stderr
    )
    chosen = run_push(*args, "--platform", "linux/amd64")
    assert chosen.code == 0 and chosen.results[0].image.digest == amd.digest
    _, media_type, _ = open_registry.client().get_manifest("fn", amd.digest)
    assert (
        media_type == client.OCI_MANIFEST
    )  # a single-architecture manifest, never an index
    assert arm.digest != amd.digest


def test_zstd_layers_are_refused_because_lambda_rejects_them(
    open_registry, tmp_path, run_push
):
    image = support.write_image(tmp_path / "zstd", [support.layer_bytes({"a": b"a"})])
    manifest = json.loads(image.manifest)
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    data = json.dumps(manifest).encode()
    digest = client.sha256_digest(data)
    (image.layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": client.OCI_MANIFEST, "digest": digest, "size": len(data)}
        ],
    }
    (image.layout / "index.json").write_text(json.dumps(index))
    run = run_push("--registry", open_registry.address, f"--image=fn={image.layout}")
    assert run.code == 2 and "AWS Lambda rejects" in run.stderr


def test_a_corrupt_layout_blob_is_never_uploaded(open_registry, images, run_push):
    image = images.build("similarity")
    handler_blob = image.layout / "blobs" / "sha256" / image.layer_digests[2][7:]
    data = bytearray(handler_blob.read_bytes())
    data[-1] ^= 0xFF
    handler_blob.write_bytes(bytes(data))
    run = run_push(
        "--registry", open_registry.address, f"--image=similarity={image.layout}"
    )
    assert run.code == 1
    assert f"does not hash to {image.layer_digests[2]}" in run.stderr
    assert (
        open_registry.client().blob_size("similarity", image.layer_digests[2]) is None
    )


def test_embedded_local_registry_when_nothing_is_configured(images, run_push, tmp_path):
    storage = tmp_path / "cache" / "local-registry"
    # Port 0: the registry binds a port the kernel picks, so no other test can hold it first.
    local = ["--local-registry-dir", str(storage), "--local-registry-port", "0"]
    image = images.build("embed_words")
    try:
        run = run_push(*local, f"--image=embed_words={image.layout}")
        assert run.code == 0, run.stderr
        announced = re.search(
            r"No registry configured: pushing to the local registry at http://127\.0\.0\.1:(\d+) ",
            run.stdout,
        )
        assert announced, run.stdout
        port = int(announced.group(1))
        assert "--registry <account>.dkr.ecr.<region>.amazonaws.com" in run.stdout
        assert answers(port)  # left running, so the image can be pulled
        assert (
            storage
            / "storage"
            / "docker"
            / "registry"
            / "v2"
            / "repositories"
            / "embed_words"
        ).is_dir()
        again = run_push(*local, f"--image=embed_words={image.layout}")
        assert f"http://127.0.0.1:{port} (already running" in again.stdout
        assert again.results[0].uploaded == 0
    finally:
        stopped = run_push(*local, "--stop-local-registry")
    assert "local registry stopped" in stopped.stdout
    assert not answers(port), "--stop-local-registry returns once the server is gone"


def test_cli_help_documents_the_options_and_errors_exit_2_without_traceback(tmp_path):
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    command = [sys.executable, "-m", "tools.push.push"]
    shown = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert shown.returncode == 0
    for option in (
        "--registry",
        "--repository",
        "--create-repositories",
        "--dry-run",
        "--tag",
        "--output-json",
    ):
        assert option in shown.stdout
    assert "PUSH_REGISTRY" in shown.stdout and "get_authorization_token" in shown.stdout
    failed = subprocess.run(
        [*command, "--registry", "bad host", f"--image=x={tmp_path}"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert (
        failed.returncode == 2
        and failed.stderr.startswith("push: error: ")
        and "Traceback" not in failed.stderr
    )
