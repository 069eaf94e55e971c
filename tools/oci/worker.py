"""Bazel persistent worker (JSON protocol) for the image tools: one long-lived process per tool.

A layer or image action is mostly interpreter start-up (Bazel's py_binary stub starts Python
twice): about 120-150 ms for a few milliseconds of work. Run as a worker, the tool answers each
action in-process. Bazel starts it with `--persistent_worker` and writes one WorkRequest per line
on stdin (`{"arguments": ["@params"], "requestId": 0, ...}`); each gets one WorkResponse line on
stdout (`{"exitCode": 0, "output": "...", "requestId": 0}`). Requests come one at a time
(singleplex), so the tool's global state (environment, working directory) is that of a normal run.
The outputs are the same as a standalone run's: the tools are deterministic functions of their
arguments and input files.
"""

import contextlib
import io
import json
import sys
import traceback


def handle(request, main, usage_error, tool_name):
    """Runs one request; returns (exit code, text for the action's output)."""
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            main(request.get("arguments", []))
        return 0, output.getvalue()
    except usage_error as error:
        return 2, output.getvalue() + f"{tool_name}: error: {error}\n"
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
        message = (
            "" if isinstance(error.code, int) or error.code is None else str(error.code)
        )
        return code, output.getvalue() + message
    except Exception:  # noqa: BLE001 - a failed action, reported to Bazel; the worker lives on
        return 1, output.getvalue() + traceback.format_exc()


def serve(main, usage_error, tool_name, stdin=None, stdout=None):
    """Answers WorkRequests until Bazel closes stdin."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        code, text = handle(request, main, usage_error, tool_name)
        response = {"exitCode": code, "output": text}
        if request.get("requestId"):
            response["requestId"] = request["requestId"]
        stdout.write(json.dumps(response) + "\n")
        stdout.flush()
