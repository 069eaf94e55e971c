"""pytest fixtures shared by the pipeline's tests: a moto server, fresh AWS resources, the fake OpenAI."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from tests.pipeline.fake_openai import API_KEY, FakeOpenAIServer

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

# Not resolved: under Bazel the handlers must come from the runfiles tree, not the symlinks' targets.
REPO_ROOT = Path(os.path.abspath(__file__)).parents[2]
REGION = "us-east-1"
_names = itertools.count(1)


@dataclass
class Aws:
    endpoint_url: str
    table_name: str
    chromadb_bucket: str
    batch_bucket: str
    queue_url: str

    def client(self, service: str) -> Any:
        # A session per client: boto3's shared default session is not thread-safe, and the
        # concurrency tests make clients from several threads.
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def dynamodb(self) -> Any:
        return self.client("dynamodb")

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @property
    def sqs(self) -> Any:
        return self.client("sqs")

    def s3_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def receive_all(self) -> list[dict[str, Any]]:
        messages = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10
            ).get("Messages", [])
            if not batch:
                return messages
            messages.extend(batch)


class _AtomicDynamoDB:
    """WSGI middleware: one DynamoDB request at a time.

    DynamoDB applies each request atomically (a conditional write checks and writes as one
    step); moto evaluates the condition and then writes, so two concurrent conditional writes
    can both succeed. Serializing DynamoDB requests gives tests DynamoDB's guarantee; other
    services stay concurrent.
    """

    def __init__(self, app: Any):
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self._app(environ, start_response)
        with self._lock:
            # Drain the response inside the lock: werkzeug may produce it lazily.
            return list(self._app(environ, start_response))


def _moto_server() -> Any:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _AtomicDynamoDB(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address,
                self._port,
                app,
                threaded=True,
                request_handler=MotoRequestHandler,
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=0, verbose=False)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = _moto_server()
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """A fresh table, buckets and queue on the shared moto server, named in the environment."""
    from receipt_dynamo import create_table

    suffix = f"{os.getpid()}-{next(_names)}"
    resources = Aws(
        endpoint_url=moto_endpoint,
        table_name=f"receipts-{suffix}",
        chromadb_bucket=f"chromadb-{suffix}",
        batch_bucket=f"batches-{suffix}",
        queue_url="",
    )
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    create_table(resources.dynamodb, resources.table_name)
    resources.s3.create_bucket(Bucket=resources.chromadb_bucket)
    resources.s3.create_bucket(Bucket=resources.batch_bucket)
    resources.queue_url = resources.sqs.create_queue(QueueName=f"compaction-{suffix}")[
        "QueueUrl"
    ]
    monkeypatch.setenv("DYNAMODB_TABLE_NAME", resources.table_name)
    monkeypatch.setenv("CHROMADB_BUCKET", resources.chromadb_bucket)
    monkeypatch.setenv("BATCH_BUCKET", resources.batch_bucket)
    monkeypatch.setenv("COMPACTION_QUEUE_URL", resources.queue_url)
    return resources


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    yield server
    server.stop()


def load_handler(name: str) -> ModuleType:
    """Imports handlers/<name>/handler.py afresh, as a Lambda cold start does, with today's environment."""
    path = REPO_ROOT / "handlers" / name / "handler.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: add //handlers/{name}:handler to the test's deps"
        )
    module_name = f"lambda_handler_{name}_{next(_names)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def sqs_event(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The event Lambda's SQS trigger would deliver for these received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "eventSource": "aws:sqs",
            }
            for m in messages
        ]
    }


def read_snapshot(
    aws: Aws, collection: str, workdir: Path
) -> tuple[dict, dict[str, dict[str, Any]]]:
    """The manifest and every record ({id: {embedding, document, metadata}}) of the current snapshot."""
    from receipt_label.chroma_store import get_collection, open_database, read_records
    from receipt_label.compaction import download_snapshot

    local = workdir / f"read-{collection}-{next(_names)}"
    _, manifest = download_snapshot(aws.s3, aws.chromadb_bucket, collection, local)
    records: dict[str, dict[str, Any]] = {}
    with open_database(local) as client:
        for page in read_records(get_collection(client, collection)):
            for record in page:
                records[record.id] = {
                    "embedding": record.embedding,
                    "document": record.document,
                    "metadata": record.metadata,
                }
    return manifest, records


def query_snapshot(
    aws: Aws, collection: str, workdir: Path, embedding: list[float], n_results: int = 1
) -> list[str]:
    from receipt_label.chroma_store import get_collection, open_database
    from receipt_label.compaction import download_snapshot

    local = workdir / f"query-{collection}-{next(_names)}"
    download_snapshot(aws.s3, aws.chromadb_bucket, collection, local)
    with open_database(local) as client:
        result = get_collection(client, collection).query(
            query_embeddings=[embedding], n_results=n_results
        )
    return result["ids"][0]
