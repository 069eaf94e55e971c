"""Runs Debian's `docker-registry` (the CNCF distribution registry) on loopback.

The push tool's default target when no registry is configured, and the server the
tests and benchmarks push to. Its configuration is written as JSON, which the
registry's YAML parser reads, so no YAML library is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from tools.registry import client

BINARY = "docker-registry"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int, host: str = "127.0.0.1") -> bool:
    """True if a registry (any auth) answers on host:port."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/", timeout=2) as response:
            headers = response.headers
    except urllib.error.HTTPError as error:
        headers = error.headers
    except OSError:
        return False
    return headers.get("Docker-Distribution-Api-Version", "").startswith("registry/2")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


class LocalRegistry:
    """A docker-registry process with storage under `root` listening on 127.0.0.1:`port`.

    `auth` is the registry's `auth` configuration section (htpasswd or token), None for
    an open registry. `detach` leaves the server running after this process exits.
    """

    def __init__(self, root: Path, port: int | None = None, auth: dict | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.auth = auth
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid_file(self) -> Path:
        return self.root / "registry.pid"

    def config(self) -> dict:
        secret_file = self.root / "http-secret"
        if not secret_file.exists():
            # Signs upload-session state; a stable secret keeps sessions valid across restarts.
            secret_file.write_text(secrets.token_hex(32))
        config = {
            "version": "0.1",
            "log": {
                "level": "warn",
                "accesslog": {"disabled": True},
                "formatter": "text",
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
            },
            "http": {"addr": self.address, "secret": secret_file.read_text().strip()},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.auth:
            config["auth"] = self.auth
        return config

    def start(self, detach: bool = False, timeout: float = 15.0) -> bool:
        """Starts the server unless one already answers on the port. Returns True if it started one."""
        if answers(self.port):
            return False
        if port_in_use(self.port):
            raise client.RegistryError(
                f"port {self.port} on 127.0.0.1 is taken by something that is not a registry; "
                "choose another with --local-registry-port"
            )
        binary = shutil.which(BINARY)
        if not binary:
            raise client.RegistryError(
                f"{BINARY} is not installed; it comes with Debian's docker-registry package "
                "(`apt-get install docker-registry`), or configure a registry with --registry"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.root / "config.yml"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self.root,
            start_new_session=detach,  # a detached server survives the push tool's exit
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.root / "registry.log").read_text(errors="replace")[-2000:]
                raise client.RegistryError(
                    f"{BINARY} did not start on {self.address}; its log says:\n{tail}"
                )
            time.sleep(0.05)
        if detach:
            self.pid_file.write_text(f"{self.process.pid}\n")
        return True

    def stop(self) -> bool:
        """Stops the server this object started, or the detached one recorded in the pid file."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            self.pid_file.unlink(missing_ok=True)
            return True
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        self.pid_file.unlink()
        # Only signal the process if it is still our registry, not a recycled pid.
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if str(self.root / "config.yml").encode() not in command:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
