"""The images really run, through dev mode (tools/devmode): the shared amd64 layers unpacked once
(in order, whiteouts honoured) and entered read-only as the nonroot user; then the image's
entrypoint and cmd (awslambdaric) serve invocations from dev mode's Lambda Runtime API against a
moto server. arm64 under qemu-user is tests/devmode/invoke_test.py's."""

from __future__ import annotations

import json
import subprocess
import uuid
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

from tests.images.images import HANDLERS, Image, image, images
from tests.pipeline.fixtures import REGION
from tools.devmode import sandbox
from tools.devmode.function import Function, Settings
from tools.devmode.image import Image as DevImage
from tools.devmode.unpack import apply_layer, unpack

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


def python(
    root: Path,
    found: Image,
    code: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`python3 -c code` in the image's sandbox, with the image's Env plus `env`."""
    dev_image = DevImage.from_directory(found.directory)
    command = sandbox.command(
        root,
        dev_image.architecture,
        [dev_image.entrypoint[0], "-c", code],
        dev_image.workdir,
        root.parent / f"status-{uuid.uuid4().hex}.json",
    )
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**dev_image.env, **(env or {})},
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


# awslambdaric against dev mode's Lambda Runtime API


def function(root: Path, found: Image, env: dict[str, str], scratch: Path, log):
    settings = Settings(
        image=DevImage.from_directory(found.directory),
        root=root,
        function_name="list-pending-batches",
        env=env,
        timeout=120,
    )
    return Function(settings, scratch, log)


def test_awslambdaric_serves_invocations_against_dynamodb(
    amd64_root, moto_endpoint, tmp_path
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
    log_path = tmp_path / "function.log"
    request_ids = []
    with open(log_path, "w") as log:
        running = function(with_handler(amd64_root, found), found, env, tmp_path, log)
        try:
            outcome = running.invoke(b'{"batch_type": "LINE_EMBEDDING"}')
            request_ids.append(outcome.request_id)
            assert outcome.ok, f"{outcome.payload!r}\n{log_path.read_text()}"
            assert sorted(json.loads(outcome.payload), key=lambda b: b["batch_id"]) == [
                {"batch_id": "line-1", "openai_batch_id": "batch_l1"},
                {"batch_id": "line-2", "openai_batch_id": "batch_l2"},
            ]

            outcome = running.invoke(b'{"limit": 0}')
            request_ids.append(outcome.request_id)
            assert outcome.ok
            rejected = json.loads(outcome.payload)
            assert rejected["error"]["type"] == "InvalidInput"
            assert "limit" in rejected["error"]["message"]

            # An AWS failure is raised, so Lambda reports it (and the state machine retries).
            dynamodb.delete_table(TableName=table)
            outcome = running.invoke(b"{}")
            request_ids.append(outcome.request_id)
            assert outcome.status == "error", outcome.payload
            error = outcome.error()
            assert error["errorType"] == "ResourceNotFoundException", error
            assert error["stackTrace"], error

            # The same instance goes on serving after a failed invocation.
            create_table(dynamodb, table)
            outcome = running.invoke(b'{"batch_type": "WORD_EMBEDDING"}')
            request_ids.append(outcome.request_id)
            assert (outcome.status, json.loads(outcome.payload)) == ("success", [])
            assert outcome.init_duration_ms is None, "a warm invocation has no init"
        finally:
            running.close()
    # The handler's JSON logs carry each invocation's request id, which Lambda hands the runtime.
    lines = [
        json.loads(line)
        for line in log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    entries = [
        (line["message"], line["request_id"])
        for line in lines
        if line.get("logger") == "receipt_label.runtime"
    ]
    assert entries == list(
        zip(["handled", "rejected input", "handler failed", "handled"], request_ids)
    )


def test_awslambdaric_reports_a_missing_setting_as_an_init_error(amd64_root, tmp_path):
    found = image("amd64", "list_pending_batches")
    env = {
        name: value
        for name, value in HANDLER_ENV.items()
        if name != "DYNAMODB_TABLE_NAME"
    }
    with open(tmp_path / "function.log", "w") as log:
        running = function(with_handler(amd64_root, found), found, env, tmp_path, log)
        try:
            outcome = running.invoke(b"{}")
        finally:
            running.close()
    assert outcome.status == "init_error", outcome.payload
    error = outcome.error()
    assert error["errorType"] == "ConfigError", error
    assert "DYNAMODB_TABLE_NAME" in error["errorMessage"]
