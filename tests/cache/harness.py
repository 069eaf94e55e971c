"""Runs tools/cache/server.py as a real process against a moto S3 server, for the cache tests."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from tools.cache.cache_server.action_result import ActionResult

REPO_ROOT = Path(__file__).resolve().parents[2]
# Under Bazel, __file__ lives in the runfiles tree, next to the server script from `data`.
SERVER_SCRIPT = Path(__file__).parents[2] / "tools" / "cache" / "server.py"
BUCKET = "cache-tests"
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTNOTREAL00001",
    "AWS_SECRET_ACCESS_KEY": "secret-that-must-never-be-logged-7f3a9",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def action_result(*blobs: bytes, **fields) -> bytes:
    """A serialized ActionResult with one output file per blob."""
    result = ActionResult(exit_code=0, **fields)
    for index, blob in enumerate(blobs):
        output = result.output_files.add(path=f"bazel-out/k8-fastbuild/bin/out{index}")
        output.digest.hash = sha256(blob)
        output.digest.size_bytes = len(blob)
    result.execution_metadata.worker = "test"
    return result.SerializeToString()


def wait_until(what: str, predicate, timeout: float = 60):
    """Polls predicate() until it returns something true; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.05)
    return result


class MotoS3:
    """moto's S3 in server mode on a loopback port of its own (bound to port 0)."""

    def __init__(self):
        self._server = None
        self.port = None
        self.endpoint_url = None
        self.client = None

    def start(self) -> MotoS3:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        _, self.port = self._server.get_host_and_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(Bucket=BUCKET)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def object(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None


class CacheServer:
    """One server.py process; every request uses a fresh connection unless one is passed in.

    `s3` is anything with an endpoint_url: MotoS3, or an S3Gate or BlackHole in front of it.
    """

    def __init__(self, cache_dir: Path, *, s3=None, prefix="", args=()):
        self.cache_dir = cache_dir
        self.prefix = prefix
        self.log_path = cache_dir.with_name(cache_dir.name + ".log")
        port_file = cache_dir.with_name(cache_dir.name + ".port")
        port_file.unlink(missing_ok=True)
        command = [sys.executable, str(SERVER_SCRIPT), f"--cache-dir={cache_dir}"]
        command += [
            f"--port-file={port_file}",
            "--drain-timeout=1",
            "--log-level=DEBUG",
        ]
        if s3 is not None:
            command += [f"--bucket={BUCKET}", f"--prefix={prefix}"]
            command += [f"--endpoint-url={s3.endpoint_url}", "--region=us-east-1"]
        command += list(args)
        env = {**os.environ, **TEST_CREDENTIALS}
        # The child needs the same packages (boto3, protobuf) that this test process imports.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in sys.path if p and os.path.isdir(p)
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(
                    f"cache server did not write its port file within 60s:\n{self.log()}"
                )
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def request(self, method, path, body=None, headers=None, connection=None):
        """(status, body bytes) of one request."""
        own = connection is None
        connection = connection or http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=60
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            if own:
                connection.close()

    def put(self, kind: str, digest: str, data: bytes) -> int:
        return self.request("PUT", f"/{kind}/{digest}", body=data)[0]

    def get(self, kind: str, digest: str) -> tuple[int, bytes]:
        return self.request("GET", f"/{kind}/{digest}")

    def status(self) -> dict:
        code, body = self.request("GET", "/status")
        assert code == 200
        return json.loads(body)

    def wait_for_status(self, what: str, predicate, timeout: float = 60) -> dict:
        """Polls /status until predicate(status) holds; fails naming `what` after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            assert time.monotonic() < deadline, (
                f"waited {timeout}s for {what}: {status}"
            )
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout: float = 60) -> str:
        """Polls the server's log until it contains `text`; fails naming it after timeout."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, (
                f"waited {timeout}s for {text!r} in the log:\n{log}"
            )
            time.sleep(0.05)
        return log

    def wait_for_uploads(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            uploads = status["uploads"]
            if uploads["queued"] == 0 and uploads["in_flight"] == 0:
                return status
            assert time.monotonic() < deadline, f"uploads still pending: {uploads}"
            time.sleep(0.05)

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def log(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
