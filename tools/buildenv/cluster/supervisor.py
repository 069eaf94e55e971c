"""The local remote-execution cluster, run inside the worker environment by `tools/bazel remote up`.

Starts PostgreSQL (unix socket only), BuildGrid (127.0.0.1, a port the system picks) and N
buildbox workers, restarts a worker or BuildGrid whenever it exits, and on SIGTERM stops them all
and exits. `state.json` in the state directory says where the server listens and which processes
run; logs/ holds each process's log. Only the standard library: it runs on the environment's
python3.

supervisor.py --state-dir DIR --workers N --buildenv HASH --isa ISA --config TEMPLATE
"""

import argparse
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
POSTGRES_BIN = Path("/usr/lib/postgresql/17/bin")
BGD_PYTHON = "/opt/buildgrid/bin/python3"
BGD = "/opt/buildgrid/bin/bgd"
DATA_DIR = Path("/var/lib/postgresql/buildgrid-cluster")
RUN_DIR = Path("/run/buildgrid-cluster")
READY_TIMEOUT = 120  # seconds for PostgreSQL or BuildGrid to come up
# A process that exits sooner than this after starting is restarted after a growing delay, so a
# worker that can not reach the server does not spin.
STABLE_SECONDS = 10
MAX_BACKOFF = 30


class ClusterError(Exception):
    pass


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor: {message}", flush=True)


class Child:
    """A supervised process: its command, log file and restart history."""

    def __init__(self, name: str, command: list[str], log_dir: Path, **popen):
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        self.popen = popen
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.started = 0.0
        self.backoff = 0.0
        self.restart_at: float | None = None

    def start(self) -> None:
        with open(self.log_path, "a") as output:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                **self.popen,
            )
        self.started = time.monotonic()
        self.restart_at = None
        log(f"{self.name} started (pid {self.process.pid})")

    def check(self) -> None:
        """Schedules a restart if the process exited; restarts it when that time has come."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        lived = now - self.started
        self.backoff = (
            0.0
            if lived >= STABLE_SECONDS
            else min(max(1.0, 2 * self.backoff), MAX_BACKOFF)
        )
        log(
            f"{self.name} exited with {code} after {lived:.0f} s; restarting in {self.backoff:.0f} s"
        )
        self.restart_at = now + self.backoff

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log(
                f"{self.name} did not stop within {timeout} s of signal {sig}; killing it"
            )
            self.process.kill()
            self.process.wait()

    def describe(self) -> dict:
        running = self.process is not None and self.process.poll() is None
        return {
            "name": self.name,
            "pid": self.process.pid if running else None,
            "restarts": self.restarts,
            "log": str(self.log_path),
        }


def wait_until(condition, what: str, child: Child) -> None:
    """Polls `condition` until true; fails naming `what` if `child` exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not condition():
        if child.process.poll() is not None:
            raise ClusterError(
                f"{child.name} exited while waiting for {what}; see {child.log_path}"
            )
        if time.monotonic() > deadline:
            raise ClusterError(
                f"timed out after {READY_TIMEOUT} s waiting for {what}; see {child.log_path}"
            )
        time.sleep(0.2)


# PostgreSQL refuses to run as root. Started with this user directly (not through runuser, which
# does not pass on the signals that stop it), its pid is the postmaster's.
AS_POSTGRES = {"user": "postgres", "group": "postgres", "extra_groups": []}


def run(command: list[str], log_path: Path, **popen) -> None:
    with open(log_path, "a") as output:
        result = subprocess.run(
            command, stdout=output, stderr=subprocess.STDOUT, check=False, **popen
        )
    if result.returncode != 0:
        raise ClusterError(
            f"`{' '.join(command)}` failed ({result.returncode}); see {log_path}"
        )


class Cluster:
    def __init__(self, args):
        self.state_dir = Path(args.state_dir)
        self.logs = self.state_dir / "logs"
        # The state directory's postgres/ and run/, mounted where the postgres user can reach them
        # (the state directory may be under a home directory only its owner can enter).
        self.run_dir = RUN_DIR
        self.data = DATA_DIR
        self.args = args
        self.port: int | None = None
        self.postgres: Child | None = None
        self.server: Child | None = None
        self.workers: list[Child] = []
        self.sql = f"postgresql+psycopg://postgres@/buildgrid?host={self.run_dir}"

    def start_postgres(self) -> None:
        shutil.chown(self.run_dir, "postgres", "postgres")
        shutil.chown(self.data, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            for leftover in self.data.iterdir():  # from an initdb that did not finish
                subprocess.run(["rm", "-rf", str(leftover)], check=True)
            # Reachable only through the socket in RUN_DIR, inside this environment: trust will do.
            run(
                [
                    str(POSTGRES_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "--auth=trust",
                    "-U",
                    "postgres",
                ],
                self.logs / "postgres.log",
                **AS_POSTGRES,
            )
        self.postgres = Child(
            "postgres",
            [
                str(POSTGRES_BIN / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.run_dir),
                "-c",
                "listen_addresses=",
            ],
            self.logs,
            **AS_POSTGRES,
        )
        self.postgres.start()
        ready = [str(POSTGRES_BIN / "pg_isready"), "-q", "-h", str(self.run_dir)]
        wait_until(
            lambda: subprocess.run(ready, check=False).returncode == 0,
            "PostgreSQL",
            self.postgres,
        )
        query = [
            str(POSTGRES_BIN / "psql"),
            "-h",
            str(self.run_dir),
            "-U",
            "postgres",
            "-tAc",
        ]
        exists = subprocess.run(
            [*query, "SELECT 1 FROM pg_database WHERE datname = 'buildgrid'"],
            capture_output=True,
            text=True,
            check=False,
        )
        if exists.stdout.strip() != "1":
            run([*query, "CREATE DATABASE buildgrid"], self.logs / "postgres.log")
        run([BGD, "migrate", "apply", self.sql], self.logs / "buildgrid.log")

    def server_config(self) -> Path:
        """The configuration with this cluster's address and database; the port is 0 (the system
        picks one) on the first start and the same port again when the server restarts."""
        template = string.Template(Path(self.args.config).read_text())
        text = template.safe_substitute(
            address=f"127.0.0.1:{self.port or 0}", sql=self.sql
        )
        path = self.run_dir / "buildgrid.yml"
        path.write_text(text)
        return path

    def start_server(self) -> None:
        port_file = self.run_dir / "buildgrid.port"
        port_file.unlink(missing_ok=True)
        self.server = Child(
            "buildgrid",
            [
                BGD_PYTHON,
                str(HERE / "bgd_server.py"),
                str(self.server_config()),
                str(port_file),
            ],
            self.logs,
        )
        self.server.start()
        wait_until(port_file.exists, "BuildGrid to listen", self.server)
        self.port = int(port_file.read_text())
        # Restarts bind the same port, so Bazel's --remote_executor stays valid.
        self.server.command[2] = str(self.server_config())

    def worker_command(self, name: str) -> list[str]:
        url = f"http://127.0.0.1:{self.port}"
        return [
            "buildbox-worker",
            f"--bots-remote={url}",
            f"--cas-remote={url}",
            "--buildbox-run=/usr/bin/buildbox-run-hosttools",
            "--runner-arg=--disable-localcas",
            "--platform",
            "OSFamily=linux",
            "--platform",
            f"ISA={self.args.isa}",
            "--platform",
            f"buildenv={self.args.buildenv}",
            name,
        ]

    def start_workers(self) -> None:
        for index in range(1, self.args.workers + 1):
            name = f"worker-{index}"
            # Each worker stages actions in its own directory under the cluster's /tmp.
            tmp = self.state_dir / "tmp" / name
            tmp.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "TMPDIR": str(tmp)}
            worker = Child(name, self.worker_command(name), self.logs, env=env, cwd=tmp)
            worker.start()
            self.workers.append(worker)

    def write_state(self, status: str) -> None:
        state = {
            "status": status,
            "supervisor_pid": os.getpid(),
            "executor": f"grpc://127.0.0.1:{self.port}" if self.port else None,
            "root": self.args.root,
            "buildenv": self.args.buildenv,
            "isa": self.args.isa,
            "sql_socket_dir": str(self.run_dir),
            "processes": [
                c.describe() for c in (self.postgres, self.server, *self.workers) if c
            ],
        }
        temporary = self.state_dir / "state.json.tmp"
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.state_dir / "state.json")

    def supervise(self, stop: threading.Event) -> None:
        """Restarts BuildGrid and workers that exit; PostgreSQL exiting ends the cluster."""
        while not stop.wait(0.5):
            if self.postgres.process.poll() is not None:
                raise ClusterError(f"PostgreSQL exited; see {self.postgres.log_path}")
            before = [c.restarts for c in (self.server, *self.workers)]
            for child in (self.server, *self.workers):
                child.check()
            if before != [c.restarts for c in (self.server, *self.workers)]:
                self.write_state("running")

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.server:
            self.server.stop()
        if self.postgres:
            self.postgres.stop(signal.SIGINT)  # PostgreSQL's "fast" shutdown


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--buildenv", required=True)
    parser.add_argument("--isa", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--root", required=True, help="this environment's path on the host"
    )
    args = parser.parse_args(argv)
    cluster = Cluster(args)
    cluster.logs.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        cluster.write_state("starting")
        cluster.start_postgres()
        cluster.start_server()
        cluster.start_workers()
        cluster.write_state("running")
        log(
            f"running: {cluster.args.workers} workers, BuildGrid on 127.0.0.1:{cluster.port}"
        )
        cluster.supervise(stop)
        status, code = "stopped", 0
    except ClusterError as error:
        log(f"error: {error}")
        status, code = f"failed: {error}", 1
    except Exception as error:  # noqa: BLE001 -- a crash must still stop the children and say why
        log(f"error: {traceback.format_exc()}")
        status, code = f"failed: {type(error).__name__}: {error}", 1
    finally:
        cluster.stop()
    cluster.write_state(status)
    log(status)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
