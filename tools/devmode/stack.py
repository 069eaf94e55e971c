"""`tools/bazel run //:dev`: the pipeline's AWS and OpenAI on loopback, for `invoke`.

A moto server with the receipts DynamoDB table (receipt_dynamo's schema), the ChromaDB and
batch S3 buckets and the compaction SQS queue; and, unless OPENAI_API_KEY is set, a local
server speaking OpenAI's files and batches API (tests/pipeline/fake_openai.py). It prints the
environment a function needs and, with --write-env FILE, writes it for `invoke --env-file`.
Stop it with Ctrl-C; nothing outlives it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
NAMES = {
    "DYNAMODB_TABLE_NAME": "receipts",
    "CHROMADB_BUCKET": "chromadb",
    "BATCH_BUCKET": "batches",
}
QUEUE_NAME = "compaction"


@dataclass
class DevStack:
    """Started by `start()`, stopped by `stop()`; `env` is what to pass to every handler."""

    openai_api_key: str | None = None  # a real key: use OpenAI itself, start no fake
    host: str = "127.0.0.1"
    moto_port: int = 0

    def start(self) -> DevStack:
        from moto.server import ThreadedMotoServer
        from receipt_dynamo import create_table

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._moto = ThreadedMotoServer(
            ip_address=self.host, port=self.moto_port, verbose=False
        )
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        # moto keeps its state per process, not per server: start from nothing every time.
        urllib.request.urlopen(
            urllib.request.Request(
                f"{self.endpoint_url}/moto-api/reset", method="POST"
            ),
            timeout=60,
        ).close()
        create_table(self.client("dynamodb"), NAMES["DYNAMODB_TABLE_NAME"])
        s3 = self.client("s3")
        s3.create_bucket(Bucket=NAMES["CHROMADB_BUCKET"])
        s3.create_bucket(Bucket=NAMES["BATCH_BUCKET"])
        self.queue_url = self.client("sqs").create_queue(QueueName=QUEUE_NAME)[
            "QueueUrl"
        ]
        self.openai = None
        if not self.openai_api_key:
            from tests.pipeline.fake_openai import API_KEY, FakeOpenAIServer

            self.openai = FakeOpenAIServer().start()
            self._openai_key = API_KEY
        return self

    def client(self, service: str):
        """A boto3 client for the stack, from its own session (safe to use in one thread)."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    @property
    def env(self) -> dict[str, str]:
        env = {
            **NAMES,
            "COMPACTION_QUEUE_URL": self.queue_url,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
        }
        if self.openai is not None:
            env["OPENAI_API_KEY"] = self._openai_key
            env["OPENAI_BASE_URL"] = self.openai.base_url
        else:
            env["OPENAI_API_KEY"] = self.openai_api_key
        return env

    def stop(self) -> None:
        if self.openai is not None:
            self.openai.stop()
        self._moto.stop()


def env_file_text(env: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in env.items())


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(
        prog="dev", description=__doc__.split("\n\n")[0]
    )
    arguments.add_argument(
        "--moto-port", type=int, default=0, help="default: a free port (printed)"
    )
    arguments.add_argument(
        "--write-env",
        type=Path,
        help="write NAME=VALUE lines here for invoke --env-file",
    )
    options = arguments.parse_args(argv)
    stack = DevStack(
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        moto_port=options.moto_port,
    )
    stack.start()
    text = env_file_text(stack.env)
    if options.write_env:
        path = Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / options.write_env
        path.write_text(text)
        print(f"# written to {path}: invoke -- --env-file {path}")
    print(text, end="", flush=True)
    print("# Ctrl-C stops the stack", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
