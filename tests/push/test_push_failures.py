"""Pushes that fail, through a fault-injecting proxy in front of docker-registry or with wrong
settings: retried when transient, otherwise one clear error and no tag."""

from __future__ import annotations

import pytest

from tests.push import support

HANDLERS = support.HANDLERS


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
