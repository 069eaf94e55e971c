"""Pushing to Amazon ECR: moto's ECR API for repositories and auth tokens, docker-registry
accepting the password moto hands out."""

from __future__ import annotations

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.push import support
from tools.registry import client

HANDLERS = support.HANDLERS


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
