"""Handlers that show what dev mode gives a function and how it reports failures."""

import ctypes
import json
import os
import sys
import time

_invocations = 0


def echo(event, context):
    """The event back, with what the function sees of its sandbox and of Lambda's context."""
    global _invocations
    _invocations += 1
    started = time.monotonic()
    time.sleep(event.get("sleep", 0) if isinstance(event, dict) else 0)
    try:
        with open("/var/task/written-by-the-function", "w"):
            root_writable = True
    except OSError as error:
        root_writable = error.strerror
    with open("/tmp/scratch", "w") as scratch:
        scratch.write("tmp is writable")
    return {
        "event": event,
        "invocation": _invocations,
        "started": started,
        "finished": time.monotonic(),
        "request_id": context.aws_request_id,
        "function_arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "root_writable": root_writable,
        "tmp": open("/tmp/scratch").read(),
        "env": dict(os.environ),
    }


def sleep(event, context):
    print("sleeping", json.dumps(event), flush=True)
    time.sleep(event["seconds"])
    return "woke up"


def segfault(event, context):
    print("about to read address 0", flush=True)
    sys.stdout.flush()
    ctypes.string_at(0)  # SIGSEGV in the interpreter itself: the runtime dies with it


def fail(event, context):
    raise ValueError(f"cannot handle {event!r}")
