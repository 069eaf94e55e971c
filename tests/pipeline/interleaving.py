"""Tools for reproducing interleavings deterministically: per-thread clients and pausing wrappers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from receipt_dynamo import ReceiptDynamoClient
from receipt_label.config import load_config
from receipt_label.runtime import Runtime

from tests.pipeline.fixtures import REGION, Aws

AWAIT_SECONDS = 60.0
ALL_SETTINGS = (
    "DYNAMODB_TABLE_NAME",
    "CHROMADB_BUCKET",
    "BATCH_BUCKET",
    "COMPACTION_QUEUE_URL",
    "OPENAI_API_KEY",
)


def session_clients(aws: Aws) -> dict[str, Any]:
    """s3, dynamodb and sqs clients from a boto3 Session of their own (one per thread)."""
    session = boto3.session.Session(
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return {
        name: session.client(name, endpoint_url=aws.endpoint_url)
        for name in ("s3", "dynamodb", "sqs")
    }


def thread_runtime(aws: Aws, wrap_s3: Callable[[Any], Any] = lambda s3: s3) -> Runtime:
    """A Runtime (as one Lambda instance has) whose AWS clients come from their own Session."""
    runtime = Runtime(load_config(ALL_SETTINGS))
    clients = session_clients(aws)
    # Runtime's clients are cached properties: setting them in __dict__ is what the cache does.
    runtime.__dict__["s3"] = wrap_s3(clients["s3"])
    runtime.__dict__["dynamodb"] = clients["dynamodb"]
    runtime.__dict__["sqs"] = clients["sqs"]
    runtime.__dict__["dynamo"] = ReceiptDynamoClient(
        aws.table_name, clients["dynamodb"]
    )
    return runtime


def wait_for(event: threading.Event, what: str) -> None:
    if not event.wait(AWAIT_SECONDS):
        raise AssertionError(f"timed out after {AWAIT_SECONDS}s waiting for {what}")


class PausingS3:
    """Passes every call to `s3`, but the first `put_object` whose Key satisfies `matches`
    signals `reached` and waits for `resume` before it is sent."""

    def __init__(self, s3: Any, matches: Callable[[str], bool]):
        self._s3, self._matches = s3, matches
        self.reached, self.resume = threading.Event(), threading.Event()
        self._paused = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def put_object(self, **kwargs: Any) -> Any:
        if not self._paused and self._matches(kwargs["Key"]):
            self._paused = True
            self.reached.set()
            wait_for(self.resume, "the test to let a paused put_object continue")
        return self._s3.put_object(**kwargs)


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(AWAIT_SECONDS * 2)
        assert not thread.is_alive(), f"thread {thread.name} did not finish"


class CallsBeforePut:
    """Passes every call to `s3`, but runs `before()` ahead of the first `put_object` whose Key
    satisfies `matches`: something that happens at exactly that point of the wrapped run."""

    def __init__(
        self, s3: Any, matches: Callable[[str], bool], before: Callable[[], None]
    ):
        self._s3, self._matches, self._before = s3, matches, before
        self.called = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def put_object(self, **kwargs: Any) -> Any:
        if not self.called and self._matches(kwargs["Key"]):
            self.called = True
            self._before()
        return self._s3.put_object(**kwargs)


class CallsBeforeFirst:
    """Passes every call to `s3`, but runs `before()` ahead of the first call of `method`."""

    def __init__(self, s3: Any, method: str, before: Callable[[], None]):
        self._s3, self._method, self._before = s3, method, before
        self.called = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._s3, name)
        if name != self._method:
            return method

        def hooked(**kwargs: Any) -> Any:
            if not self.called:
                self.called = True
                self._before()
            return method(**kwargs)

        return hooked
