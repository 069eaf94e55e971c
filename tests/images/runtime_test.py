"""The images really run: their layers unpacked into a directory (in order, whiteouts honoured) and
entered with unshare's chroot as the nonroot user (a user namespace when not root). amd64 runs
natively, arm64 under qemu-aarch64-static. Last, the image's entrypoint and cmd (awslambdaric)
serve invocations from a Lambda Runtime API served by this test, against a moto server."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    BatchType,
    ReceiptDynamoClient,
    create_table,
)

from tests.images.images import (
    HANDLERS,
    Image,
    apply_layer,
    command_in_root,
    image,
    image_env,
    images,
    unpack,
)
from tests.pipeline.fixtures import REGION

DEPENDENCIES = "import chromadb, numpy, boto3, openai, awslambdaric"
# Values for every variable some handler checks at cold start (receipt_label.config).
HANDLER_ENV = {
    "DYNAMODB_TABLE_NAME": "receipts",
    "CHROMADB_BUCKET": "chromadb",
    "BATCH_BUCKET": "batches",
    "COMPACTION_QUEUE_URL": "http://127.0.0.1:9/000000000000/compaction",
    "OPENAI_API_KEY": "sk-not-a-real-key",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


def run_in(
    root: Path, found: Image, argv: list[str], env: dict[str, str], timeout: float = 300
):
    return subprocess.run(
        command_in_root(
            root,
            found.config["architecture"],
            argv,
            workdir=found.config["config"]["WorkingDir"],
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=image_env(found.config, **env),
    )


def python(
    root: Path,
    found: Image,
    code: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
):
    return run_in(
        root,
        found,
        [found.config["config"]["Entrypoint"][0], "-c", code],
        env or {},
        timeout,
    )


@pytest.fixture(scope="module")
def shared_amd64_root(tmp_path_factory) -> Path:
    """The layers all six amd64 images share, unpacked once and never changed afterwards."""
    variants = images("amd64")
    assert all(found.layers[:-1] == variants[0].layers[:-1] for found in variants)
    return unpack(
        variants[0].layer_blobs()[:-1], tmp_path_factory.mktemp("amd64") / "rootfs"
    )


@pytest.fixture
def amd64_root(shared_amd64_root, tmp_path) -> Path:
    """This test's own copy of the shared layers, to add its handler layer to.

    Hard links make the copy cheap and are safe: applying a layer removes a file before writing
    one in its place, so the shared inodes are never written through."""
    root = tmp_path / "rootfs"
    subprocess.run(["cp", "-al", str(shared_amd64_root), str(root)], check=True)
    return root


def with_handler(root: Path, found: Image) -> Path:
    apply_layer(found.layer_blobs()[-1], root)
    return root


def test_python_imports_the_dependencies(amd64_root):
    found = image("amd64", "list_pending_batches")
    code = (
        DEPENDENCIES
        + "; import json, platform, sys, numpy; print(json.dumps([platform.machine(), sys.executable, numpy.__file__, float(numpy.arange(4).sum())]))"
    )
    result = python(with_handler(amd64_root, found), found, code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "x86_64",
        "/usr/bin/python3.13",
        "/usr/local/lib/python3.13/dist-packages/numpy/__init__.py",
        6.0,
    ]


def test_a_failing_import_fails(amd64_root):
    """The checks here would be worthless if an error inside the image went unnoticed."""
    found = image("amd64", "list_pending_batches")
    result = python(
        amd64_root, found, "import receipt_label, not_a_module_of_the_image"
    )
    assert result.returncode != 0
    assert (
        "ModuleNotFoundError: No module named 'not_a_module_of_the_image'"
        in result.stderr
    )


@pytest.mark.parametrize("name", HANDLERS)
def test_each_handler_module_imports_in_its_image(amd64_root, name):
    found = image("amd64", name)
    code = "import handler; print(handler.__file__, callable(handler.handler))"
    result = python(with_handler(amd64_root, found), found, code, HANDLER_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/var/task/handler.py", "True"]


def test_arm64_image_imports_under_qemu(tmp_path):
    found = image("arm64", "list_pending_batches")
    root = unpack(found.layer_blobs(), tmp_path / "rootfs")
    code = (
        DEPENDENCIES
        + ", handler, platform; print(platform.machine(), handler.__file__)"
    )
    result = python(root, found, code, HANDLER_ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aarch64", "/var/task/handler.py"]


# awslambdaric against a Lambda Runtime API


class RuntimeApi:
    """The Lambda Runtime API (version 2018-06-01) that Lambda serves one function instance: events
    are handed out by GET .../invocation/next, results come back by POST."""

    FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:list-pending-batches"

    def __init__(self):
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.results: queue.Queue[tuple[str, str | None, dict[str, str], bytes]] = (
            queue.Queue()
        )
        self.stopping = threading.Event()
        self.request_ids: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def lowercase_headers(self) -> dict[str, str]:
                return {key.lower(): value for key, value in self.headers.items()}

            def do_GET(self):
                if self.path != "/2018-06-01/runtime/invocation/next":
                    return self.reply(404, b'{"errorType": "NotFound"}')
                while not api.stopping.is_set():
                    try:
                        request_id, event = api.events.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    deadline = int((time.time() + 60) * 1000)
                    return self.reply(
                        200,
                        event,
                        {
                            "Lambda-Runtime-Aws-Request-Id": request_id,
                            "Lambda-Runtime-Deadline-Ms": str(deadline),
                            "Lambda-Runtime-Invoked-Function-Arn": RuntimeApi.FUNCTION_ARN,
                            "Lambda-Runtime-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0",
                        },
                    )

            def do_POST(self):
                parts = self.path.strip("/").split("/")
                body = self.body()
                if (
                    len(parts) == 5
                    and parts[:3] == ["2018-06-01", "runtime", "invocation"]
                    and parts[4]
                    in (
                        "response",
                        "error",
                    )
                ):
                    api.results.put(
                        (parts[4], parts[3], self.lowercase_headers(), body)
                    )
                    return self.reply(202, b'{"status": "OK"}')
                if parts == ["2018-06-01", "runtime", "init", "error"]:
                    api.results.put(
                        ("init/error", None, self.lowercase_headers(), body)
                    )
                    return self.reply(202, b'{"status": "OK"}')
                return self.reply(404, b'{"errorType": "NotFound"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def invoke(self, event, timeout: float = 120) -> tuple[str, dict[str, str], bytes]:
        """Hands `event` to the runtime; returns ('response' or 'error', headers, body) it posted."""
        request_id = str(uuid.uuid4())
        self.request_ids.append(request_id)
        self.events.put((request_id, json.dumps(event).encode()))
        kind, posted_id, headers, body = self.next_result(
            timeout, f"invocation {event}"
        )
        assert posted_id == request_id, (
            f"the runtime answered {posted_id} to {request_id}"
        )
        return kind, headers, body

    def next_result(self, timeout: float, awaited: str) -> tuple:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"the function posted no result for {awaited} within {timeout:.0f} s"
            ) from None

    def close(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the Runtime API server did not stop in 60 s"


@pytest.fixture
def runtime_api():
    api = RuntimeApi()
    yield api
    api.close()


def start_function(
    root: Path, found: Image, runtime_api: RuntimeApi, env: dict[str, str], log: Path
):
    """The image's entrypoint + cmd, as Lambda starts it: in WorkingDir, with the config's Env."""
    argv = found.config["config"]["Entrypoint"] + found.config["config"]["Cmd"]
    command = command_in_root(
        root, found.config["architecture"], argv, found.config["config"]["WorkingDir"]
    )
    full_env = image_env(
        found.config, AWS_LAMBDA_RUNTIME_API=runtime_api.address, **env
    )
    with open(log, "w") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=full_env
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_awslambdaric_serves_invocations_against_dynamodb(
    amd64_root, runtime_api, moto_endpoint, tmp_path
):
    found = image("amd64", "list_pending_batches")
    dynamodb = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    table = f"receipts-image-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb, table)
    ReceiptDynamoClient(table, dynamodb).put_many(
        [
            BatchSummary("line-1", BatchType.LINE_EMBEDDING, "batch_l1", "t"),
            BatchSummary("line-2", BatchType.LINE_EMBEDDING, "batch_l2", "t"),
            BatchSummary(
                "done",
                BatchType.LINE_EMBEDDING,
                "batch_d",
                "t",
                status=BatchStatus.COMPLETED,
            ),
        ]
    )
    env = {
        **HANDLER_ENV,
        "DYNAMODB_TABLE_NAME": table,
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    log = tmp_path / "function.log"
    process = start_function(
        with_handler(amd64_root, found), found, runtime_api, env, log
    )
    try:
        kind, _, body = runtime_api.invoke({"batch_type": "LINE_EMBEDDING"})
        assert kind == "response", f"{body!r}\n{log.read_text()}"
        assert sorted(json.loads(body), key=lambda b: b["batch_id"]) == [
            {"batch_id": "line-1", "openai_batch_id": "batch_l1"},
            {"batch_id": "line-2", "openai_batch_id": "batch_l2"},
        ]

        kind, _, body = runtime_api.invoke({"limit": 0})
        assert kind == "response"
        rejected = json.loads(body)
        assert rejected["error"]["type"] == "InvalidInput"
        assert "limit" in rejected["error"]["message"]

        # An AWS failure is raised, so Lambda reports it (and the state machine retries).
        dynamodb.delete_table(TableName=table)
        kind, headers, body = runtime_api.invoke({})
        assert kind == "error", body
        error = json.loads(body)
        assert error["errorType"] == "ResourceNotFoundException", error
        assert error["stackTrace"], error
        # awslambdaric's client sends the X-Ray cause, not Lambda-Runtime-Function-Error-Type.
        assert (
            "ResourceNotFoundException"
            in headers["lambda-runtime-function-xray-error-cause"]
        )

        # The same instance goes on serving after a failed invocation.
        create_table(dynamodb, table)
        kind, _, body = runtime_api.invoke({"batch_type": "WORD_EMBEDDING"})
        assert (kind, json.loads(body)) == ("response", [])
        assert process.poll() is None, log.read_text()
    finally:
        stop(process)
    # The handler's JSON logs carry each invocation's request id, which Lambda hands the runtime.
    lines = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{")
    ]
    entries = [
        (line["message"], line["request_id"])
        for line in lines
        if line.get("logger") == "receipt_label.runtime"
    ]
    assert entries == list(
        zip(
            ["handled", "rejected input", "handler failed", "handled"],
            runtime_api.request_ids,
        )
    )


def test_awslambdaric_reports_a_missing_setting_as_an_init_error(
    amd64_root, runtime_api, tmp_path
):
    found = image("amd64", "list_pending_batches")
    env = {
        name: value
        for name, value in HANDLER_ENV.items()
        if name != "DYNAMODB_TABLE_NAME"
    }
    log = tmp_path / "function.log"
    process = start_function(
        with_handler(amd64_root, found), found, runtime_api, env, log
    )
    try:
        kind, posted_id, headers, body = runtime_api.next_result(120, "its init error")
        assert (kind, posted_id) == ("init/error", None), body
        error = json.loads(body)
        assert error["errorType"] == "ConfigError", error
        assert "DYNAMODB_TABLE_NAME" in error["errorMessage"]
        assert headers["lambda-runtime-function-error-type"] == "ConfigError"
        assert process.wait(timeout=60) != 0, "a function whose init failed must exit"
    finally:
        stop(process)
