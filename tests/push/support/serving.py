"""Running the real servers: HTTP servers in threads, docker-registry, skopeo, a refused port."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tools.registry import client
from tools.registry.local_registry import LocalRegistry


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("PUSH_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(
                f"{name} is required (PUSH_TEST_REQUIRE_TOOLS=1) but not installed"
            )
        pytest.skip(f"{name} is not installed")
    return path


def serve_in_thread(server: http.server.HTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def stop_serving(server: http.server.HTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=60)
    assert not thread.is_alive(), (
        f"{type(server).__name__} on port {server.server_address[1]} did not stop within 60 s"
    )


@contextlib.contextmanager
def registry(root: Path, auth: dict | None = None):
    require_tool("docker-registry")
    server = LocalRegistry(root, auth=auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def skopeo_copy(source: str, destination: str, *extra: str) -> None:
    skopeo = require_tool("skopeo")
    command = [
        skopeo,
        "--insecure-policy",
        "copy",
        "--quiet",
        *extra,
        source,
        destination,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"


@contextlib.contextmanager
def refused_port():
    """A loopback port bound but not listening while the context lasts: connecting is refused,
    and no other test can start a server on it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@dataclasses.dataclass
class RunningRegistry:
    server: LocalRegistry
    address: str
    user: str = ""
    password: str = ""

    def client(self) -> client.Registry:
        """A registry client of our own, to look at what a push left behind."""
        credentials = client.Credentials(self.user, self.password, "test")
        return client.Registry(
            client.parse_registry(self.address),
            lambda: credentials if self.user else None,
        )
