"""Fixtures: a clean environment, handler-like images and real registries to push them to."""

from __future__ import annotations

import dataclasses
import io

import pytest

from tests.push import support
from tools.push import push


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No credentials, registry settings or git checkout leak in from the machine running the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))
    for name in (
        "PUSH_REGISTRY",
        "PUSH_REPOSITORY_PREFIX",
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "AWS_PROFILE",
        "RUNFILES_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def images(tmp_path) -> support.HandlerImages:
    return support.HandlerImages(tmp_path / "images")


@pytest.fixture
def open_registry(tmp_path):
    with support.registry(tmp_path / "open-registry") as server:
        yield support.RunningRegistry(server, server.address)


@pytest.fixture
def basic_registry(tmp_path):
    """docker-registry with htpasswd auth; DOCKER_CONFIG holds the right credentials."""
    root = tmp_path / "basic-registry"
    root.mkdir()
    (root / "htpasswd").write_text(support.htpasswd_line("pusher", "s3cret") + "\n")
    auth = {"htpasswd": {"realm": "test", "path": str(root / "htpasswd")}}
    with support.registry(root, auth) as server:
        support.docker_config(
            tmp_path / "home" / "docker", server.address, "pusher", "s3cret"
        )
        yield support.RunningRegistry(server, server.address, "pusher", "s3cret")


@pytest.fixture
def token_server(tmp_path):
    server = support.TokenServer(
        tmp_path, {"pusher": "t0ken-pass"}, allow_anonymous_pull=True
    )
    yield server
    server.close()


@pytest.fixture
def token_registry(tmp_path, token_server):
    """docker-registry with token auth; anonymous pull, authenticated push; DOCKER_CONFIG has the user."""
    with support.registry(
        tmp_path / "token-registry", token_server.auth_config()
    ) as server:
        support.docker_config(
            tmp_path / "home" / "docker", server.address, "pusher", "t0ken-pass"
        )
        yield support.RunningRegistry(server, server.address, "pusher", "t0ken-pass")


@dataclasses.dataclass
class PushRun:
    code: int
    results: list[push.Result]
    stdout: str
    stderr: str

    def by_name(self) -> dict[str, push.Result]:
        return {result.name: result for result in self.results}


# Small chunks so the 3 MiB base layer of the test images goes up in PATCHes.
FAST = ["--chunk-size", str(1 << 20), "--jobs", "3"]


@pytest.fixture
def run_push():
    """Runs the push tool in-process as the CLI would; returns its exit code, results and output."""

    def run(*argv: str) -> PushRun:
        out, err = io.StringIO(), io.StringIO()
        code, results = push.run([*FAST, *argv], out, err)
        return PushRun(code, results, out.getvalue(), err.getvalue())

    return run
