"""Runs Debian's `docker-registry` (the CNCF distribution registry) on loopback.

The push tool's default target when no registry is configured, and the server the
tests and benchmarks push to. Its configuration is written as JSON, which the
registry's YAML parser reads, so no YAML library is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
# What docker-registry logs (at level info) once its listener is bound, with the real port.
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


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


def _is_running(pid: int) -> bool:
    """False once `pid` has exited (a zombie awaiting its parent's wait() counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


class LocalRegistry:
    """A docker-registry process with storage under `root` listening on 127.0.0.1:`port`.

    Port 0 (the default) lets the kernel pick a free port when the server binds, and `port`
    is what the server reports: no window in which another process could take it. `auth` is
    the registry's `auth` configuration section (htpasswd or token), None for an open
    registry. `detach` leaves the server running after this process exits.
    """

    def __init__(self, root: Path, port: int = 0, auth: dict | None = None):
        self.root = Path(root)
        self.port = port
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
                # The kernel-chosen port is only reported in the info-level "listening on" line.
                "level": "warn" if self.port else "info",
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

    def start(self, detach: bool = False, timeout: float = 60.0) -> bool:
        """Starts the server unless one already answers on the port. Returns True if it started one."""
        if not self.port:
            recorded = self._detached()
            if recorded and answers(recorded[1]):
                self.port = recorded[1]  # a detached server started earlier with port 0
                return False
        elif answers(self.port):
            return False
        if self.port and port_in_use(self.port):
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
        log_path = self.root / "registry.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        log_start = log.tell()
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
        # Polls until the server answers, bounded by the deadline; fails early if it exits.
        while not (self._reported_port(log_path, log_start) and answers(self.port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(log_path, "rb") as reread:
                    reread.seek(log_start)
                    tail = reread.read().decode(errors="replace")[-2000:]
                raise client.RegistryError(
                    f"{BINARY} did not start on {self.address} within {timeout:.0f}s; its log says:\n{tail}"
                )
            time.sleep(0.05)
        if detach:
            self.pid_file.write_text(f"{self.process.pid} {self.port}\n")
        return True

    def _reported_port(self, log_path: Path, offset: int) -> int:
        """The port: the configured one, else the one this run's server logged (0 until it has)."""
        if self.port:
            return self.port
        with open(log_path, "rb") as log:
            log.seek(offset)
            found = LISTENING.search(log.read())
        if found:
            self.port = int(found.group(1))
        return self.port

    def _detached(self) -> tuple[int, int] | None:
        """(pid, port) of the detached server the pid file records, if it still runs from this root."""
        try:
            fields = self.pid_file.read_text().split()
            pid, port = int(fields[0]), int(fields[1]) if len(fields) > 1 else self.port
        except (FileNotFoundError, ValueError, IndexError):
            return None
        # Only a process serving this root's config is ours, not a recycled pid.
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if str(self.root / "config.yml").encode() not in command:
            return None
        return pid, port

    def stop(self, timeout: float = 30.0) -> bool:
        """Stops the server this object started, or the detached one recorded in the pid file."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            self.pid_file.unlink(missing_ok=True)
            return True
        recorded = self._detached()
        self.pid_file.unlink(missing_ok=True)
        if recorded is None:
            return False
        pid = recorded[0]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # Not our child, so no wait(): poll until it is gone, so its port is free when we return.
        deadline = time.monotonic() + timeout
        while _is_running(pid):
            if time.monotonic() > deadline:
                raise client.RegistryError(
                    f"{BINARY} (pid {pid}) did not exit within {timeout:.0f}s of SIGTERM"
                )
            time.sleep(0.05)
        return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
