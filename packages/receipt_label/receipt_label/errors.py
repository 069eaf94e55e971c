"""Errors that the handlers turn into clear results instead of stack traces."""


class InvalidInput(ValueError):
    """The event or a file it names is malformed; nothing was changed. The message says how to fix it."""


class ConfigError(RuntimeError):
    """The function's environment lacks a setting or has a bad one."""


class MalformedSqsEvent(RuntimeError):
    """An SQS-triggered invocation whose records cannot be told apart. It is raised, not returned:
    Lambda treats any returned value without batchItemFailures as success and deletes every
    message, so the invocation must fail and SQS delivers the batch again (then to the DLQ)."""
