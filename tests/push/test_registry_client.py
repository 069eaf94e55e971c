"""The registry client's less travelled paths, against Debian's docker-registry: credential
helpers, expired tokens, redirected blob downloads, mounts a registry answers with an upload
session, and upload sessions the registry loses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.push import support
from tools.registry import client

HELPER = """#!/bin/sh
# docker-credential-{name}: Docker's credential helper protocol (`get`, registry on stdin).
printf '%s %s\\n' "$1" "$(cat)" >> {calls}
{body}
"""


def credential_helper(bin_dir: Path, name: str, body: str) -> Path:
    """An executable docker-credential-NAME in bin_dir; returns the file logging its calls."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls = bin_dir / f"{name}.calls"
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(HELPER.format(name=name, calls=calls, body=body))
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    return calls


@pytest.fixture
def helper_bin(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def write_docker_config(tmp_path: Path, config: dict) -> None:
    directory = tmp_path / "home" / "docker"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("where", ["credHelpers", "credsStore"])
def test_credentials_come_from_the_configured_helper(
    where, basic_registry, images, run_push, tmp_path, helper_bin
):
    address = basic_registry.address
    calls = credential_helper(
        helper_bin,
        "teststore",
        f"""case "$(tail -n 1 {helper_bin}/teststore.calls)" in
  "get {address}") echo '{{"ServerURL": "{address}", "Username": "pusher", "Secret": "s3cret"}}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac""",
    )
    config = (
        {"credHelpers": {address: "teststore"}}
        if where == "credHelpers"
        else {"credsStore": "teststore"}
    )
    write_docker_config(tmp_path, config)
    image = images.build("similarity")
    run = run_push("--registry", address, f"--image=similarity={image.layout}")
    assert run.code == 0, run.stderr
    assert calls.read_text().splitlines() == [f"get {address}"], "asked once"
    regclient = basic_registry.client()
    assert regclient.manifest_digest("similarity", image.digest) == image.digest


def test_a_helper_that_has_no_credentials_means_none(
    basic_registry, images, run_push, tmp_path, helper_bin
):
    credential_helper(
        helper_bin,
        "empty",
        'echo "credentials not found in native keychain"; exit 1',
    )
    write_docker_config(tmp_path, {"credsStore": "empty"})
    run = run_push(
        "--registry",
        basic_registry.address,
        f"--image=x={images.build('similarity').layout}",
    )
    assert run.code == 2
    assert "requires a user name and password and none were found" in run.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            (
                "echo 'error getting credentials - err: exit status 1, out: "
                "GDBus.Error: The name org.freedesktop.secrets was not provided' >&2; exit 1"
            ),
            (
                "credential helper docker-credential-broken failed (exit 1): error getting "
                "credentials - err: exit status 1"
            ),
        ),
        ("echo 'Username: pusher'", "docker-credential-broken answered"),
    ],
    ids=["fails", "garbage"],
)
def test_a_broken_helper_is_one_clear_error(
    body, message, basic_registry, images, run_push, tmp_path, helper_bin
):
    credential_helper(helper_bin, "broken", body)
    write_docker_config(tmp_path, {"credHelpers": {basic_registry.address: "broken"}})
    run = run_push(
        "--registry",
        basic_registry.address,
        f"--image=x={images.build('similarity').layout}",
    )
    assert run.code == 2, run.stderr
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_missing_helper_is_named(basic_registry, images, run_push, tmp_path):
    write_docker_config(
        tmp_path, {"credHelpers": {basic_registry.address: "not-installed"}}
    )
    run = run_push(
        "--registry",
        basic_registry.address,
        f"--image=x={images.build('similarity').layout}",
    )
    assert run.code == 2
    assert "docker-credential-not-installed is not on PATH" in run.stderr


def test_a_token_the_registry_stops_accepting_is_replaced_and_the_push_goes_on(
    token_server, token_registry, images, run_push
):
    proxy = support.FaultProxy(token_registry.server.port)
    # The registry sees these requests without their token and challenges, as for an expired one.
    proxy.faults = [
        support.Fault("HEAD", "/blobs/", "unauthorized"),
        support.Fault("PUT", "/manifests/", "unauthorized"),
    ]
    image = images.build("embed_lines")
    try:
        run = run_push(
            "--registry",
            token_registry.address,
            "--registry-endpoint",
            proxy.url,
            "--jobs",
            "1",
            f"--image=x={image.layout}",
        )
    finally:
        proxy.close()
    assert run.code == 0, run.stderr
    assert [fault.hits for fault in proxy.faults] == [1, 1]
    pushes = [
        claims
        for claims in token_server.issued
        if {"type": "repository", "name": "x", "actions": ["pull", "push"]}
        in claims["access"]
    ]
    assert len(pushes) == 3, "one token, then a new one after each rejection"
    assert token_registry.client().manifest_digest("x", image.digest) == image.digest


def test_a_token_server_that_only_hands_out_expired_tokens_is_a_clear_error(
    tmp_path, images, run_push
):
    tokens = support.TokenServer(
        tmp_path, {"pusher": "t0ken-pass"}, expired_tokens=1000
    )
    try:
        with support.registry(tmp_path / "expired", tokens.auth_config()) as server:
            support.docker_config(
                tmp_path / "home" / "docker", server.address, "pusher", "t0ken-pass"
            )
            run = run_push(
                "--registry",
                server.address,
                f"--image=x={images.build('similarity').layout}",
            )
    finally:
        tokens.close()
    assert run.code == 2, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert "rejected contacting the registry as pusher" in run.stderr
    assert len(tokens.issued) == 1, "no endless token loop"


def test_a_blob_redirected_to_another_host_is_fetched_without_the_registry_credentials(
    basic_registry, images, tmp_path
):
    image = images.build("similarity")
    handler_layer = image.layer_digests[2]
    blob = (image.layout / "blobs" / "sha256" / handler_layer[7:]).read_bytes()
    store = support.BlobStore({handler_layer: blob})
    proxy = support.FaultProxy(basic_registry.server.port)
    proxy.redirect_to = store.url
    proxy.faults = [support.Fault("GET", f"/blobs/{handler_layer}", "redirect")]
    try:
        registry = client.Registry(
            client.parse_registry(basic_registry.address, endpoint=proxy.url),
            lambda: client.Credentials("pusher", "s3cret", "test"),
        )
        # The registry must hold the blob for its auth to pass before the redirect.
        registry.upload_blob(
            "similarity", handler_layer, _blob_path(image, handler_layer), len(blob)
        )
        size = registry.fetch_blob(
            "similarity", handler_layer, tmp_path / "fetched", len(blob)
        )
    finally:
        proxy.close()
        store.close()
    assert size == len(blob) and (tmp_path / "fetched").read_bytes() == blob
    assert proxy.injected == [
        ("GET", f"/v2/similarity/blobs/{handler_layer}", "redirect")
    ]
    assert len(store.requests) == 1
    assert "Authorization" not in store.requests[0], store.requests[0]


def test_a_redirect_to_a_corrupt_blob_is_refused_and_leaves_nothing(
    open_registry, images, tmp_path
):
    image = images.build("similarity")
    handler_layer = image.layer_digests[2]
    blob = (image.layout / "blobs" / "sha256" / handler_layer[7:]).read_bytes()
    store = support.BlobStore({handler_layer: blob[:-1] + bytes([blob[-1] ^ 1])})
    proxy = support.FaultProxy(open_registry.server.port)
    proxy.redirect_to = store.url
    proxy.faults = [support.Fault("GET", "/blobs/sha256:", "redirect", times=1000)]
    try:
        registry = client.Registry(
            client.parse_registry(open_registry.address, endpoint=proxy.url),
            retries=1,
            backoff=0.01,
        )
        with pytest.raises(client.DigestMismatchError, match="refusing it"):
            registry.fetch_blob(
                "similarity", handler_layer, tmp_path / "fetched", len(blob)
            )
    finally:
        proxy.close()
        store.close()
    assert list(tmp_path.glob("fetched*")) == []


def _blob_path(image: support.BuiltImage, digest: str) -> Path:
    return image.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_a_mount_answered_with_an_upload_session_falls_back_to_uploading(
    open_registry, images, run_push
):
    built = {name: images.build(name) for name in ("embed_lines", "embed_words")}
    proxy = support.FaultProxy(open_registry.server.port)
    proxy.faults = [support.Fault("POST", "mount=", "unmount", times=1000)]
    try:
        run = run_push("--registry", proxy.url, *support.image_args(built))
    finally:
        proxy.close()
    assert run.code == 0, run.stderr
    # The second image asked to mount the shared base and dependency layers and got upload
    # sessions instead, which it used.
    assert len(proxy.injected) == 2, proxy.injected
    assert all(result.mounted == 0 for result in run.results)
    assert sum(result.uploaded for result in run.results) == sum(
        image.blob_bytes + len(image.manifest) for image in built.values()
    )
    regclient = open_registry.client()
    for name, image in built.items():
        for digest, size in zip(image.layer_digests, image.layer_sizes, strict=True):
            assert regclient.blob_size(name, digest) == size
        assert regclient.manifest_digest(name, image.digest) == image.digest


@pytest.mark.parametrize(
    "lost",
    [
        support.Fault("PATCH", "/blobs/uploads/", "404"),
        support.Fault("PUT", "/blobs/uploads/", "404"),
    ],
    ids=["patch", "put"],
)
def test_a_lost_upload_session_restarts_the_upload(lost, open_registry, images):
    image = images.build("compaction")
    base_digest, base_size = image.layer_digests[0], image.layer_sizes[0]
    proxy = support.FaultProxy(open_registry.server.port)
    proxy.faults = [lost]
    try:
        registry = client.Registry(
            client.parse_registry(open_registry.address, endpoint=proxy.url),
            chunk_size=1 << 20,
            monolithic_limit=1 << 20,
            backoff=0.01,
        )
        registry.upload_blob(
            "compaction", base_digest, _blob_path(image, base_digest), base_size
        )
    finally:
        proxy.close()
    assert lost.hits == 1
    starts = [
        path
        for method, path in proxy.requests
        if method == "POST" and path.endswith("/blobs/uploads/")
    ]
    assert len(starts) == 2, "a new upload session after the lost one"
    assert open_registry.client().blob_size("compaction", base_digest) == base_size
