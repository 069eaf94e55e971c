"""What a handler needs at run time (config and clients), and the Lambda entry wrapper."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

from receipt_dynamo import ReceiptDynamoClient

from receipt_label.config import Config, load_config
from receipt_label.errors import InvalidInput
from receipt_label.logs import get_logger, log, register_secret

logger = get_logger("receipt_label.runtime")

OPENAI_MAX_RETRIES = 3
OPENAI_TIMEOUT_SECONDS = 120.0


class Runtime:
    """Config plus lazily made clients; made once per cold start and reused across invocations."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config
        self.clock = clock
        self.sleep = sleep
        register_secret(config.openai_api_key)

    @cached_property
    def _boto3_session(self) -> Any:
        import boto3

        # Its own session: boto3's default session is not safe to share between threads.
        return boto3.session.Session()

    def _boto3_client(self, service: str) -> Any:
        return self._boto3_session.client(
            service, endpoint_url=self.config.aws_endpoint_url
        )

    @cached_property
    def dynamodb(self) -> Any:
        return self._boto3_client("dynamodb")

    @cached_property
    def dynamo(self) -> ReceiptDynamoClient:
        return ReceiptDynamoClient(self.config.dynamodb_table_name, self.dynamodb)

    @cached_property
    def s3(self) -> Any:
        return self._boto3_client("s3")

    @cached_property
    def sqs(self) -> Any:
        return self._boto3_client("sqs")

    @cached_property
    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(
            api_key=self.config.openai_api_key,
            base_url=self.config.openai_base_url,
            max_retries=OPENAI_MAX_RETRIES,
            timeout=OPENAI_TIMEOUT_SECONDS,
        )


Handler = Callable[[Any, Any], Any]


def lambda_entry(
    name: str, function: Callable[[Any, Runtime], Any], required: Iterable[str]
) -> Handler:
    """Validates the environment now (cold start) and returns `handler(event, context)`.

    Bad input comes back as {"error": {"type": "InvalidInput", "message": ...}}; anything else
    is logged and raised so that Lambda (or the state machine) retries it.
    """
    runtime = Runtime(load_config(required))

    def handler(event: Any, context: Any) -> Any:
        request_id = getattr(context, "aws_request_id", None)
        started = time.monotonic()
        try:
            result = function(event, runtime)
        except InvalidInput as error:
            log(
                logger,
                logging.WARNING,
                "rejected input",
                handler=name,
                request_id=request_id,
                error=str(error),
            )
            return {"error": {"type": "InvalidInput", "message": str(error)}}
        except Exception as error:
            logger.exception(
                "handler failed",
                extra={
                    "fields": {
                        "handler": name,
                        "request_id": request_id,
                        "error_type": type(error).__name__,
                    }
                },
            )
            raise
        elapsed_ms = round((time.monotonic() - started) * 1000)
        log(
            logger,
            logging.INFO,
            "handled",
            handler=name,
            request_id=request_id,
            duration_ms=elapsed_ms,
        )
        return result

    return handler
