"""One function instance: the image's ENTRYPOINT + CMD in the sandbox, under a Runtime API.

`Function.invoke()` starts the instance when none is warm (a cold start, reported as Init
Duration), hands it the event, and waits for its response or error. A failed init, a timeout
and a crash each end the instance (the next invocation starts a fresh one) and come back as
the error payload Lambda would return. The function's output, and START/END/REPORT lines as
Lambda writes them, go to `log`.
"""

from __future__ import annotations

import collections
import json
import math
import queue
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tools.devmode import sandbox
from tools.devmode.image import Image
from tools.devmode.runtime_api import Happening, Invocation, RuntimeApi

LAST_LINES = 20  # of the function's output, shown when it crashes
DEFAULT_REGION = "us-east-1"
ACCOUNT = "000000000000"


@dataclass(frozen=True)
class Settings:
    image: Image
    root: Path
    function_name: str
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 3.0  # seconds, Lambda's default
    memory_mb: int = 128  # Lambda's default; reported, not enforced
    init_timeout: float = (
        120.0  # generous: a cold start under qemu takes tens of seconds
    )
    handler: str | None = (
        None  # overrides the image's CMD, as Lambda's ImageConfig.Command
    )

    @property
    def region(self) -> str:
        return (
            self.env.get("AWS_REGION")
            or self.env.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{self.function_name}"

    @property
    def command(self) -> list[str]:
        if self.handler is None:
            return self.image.command
        return self.image.entrypoint + [self.handler]


@dataclass(frozen=True)
class Outcome:
    request_id: str
    status: str  # success, error, init_error, timeout, crash
    payload: (
        bytes  # the response, or Lambda's error object {errorType, errorMessage, ...}
    )
    duration_ms: float
    init_duration_ms: float | None
    max_memory_mb: int
    report: str

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def error(self) -> dict:
        return json.loads(self.payload)


def memory_used_mb(pid: int) -> int:
    """The largest peak resident set (VmHWM) among `pid` and its descendants, in MB."""
    peak, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [
                    int(child) for child in (task / "children").read_text().split()
                ]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return math.ceil(peak / 1024)


def _error_payload(error_type: str, message: str, **extra) -> bytes:
    return json.dumps(
        {"errorType": error_type, "errorMessage": message, **extra}
    ).encode()


class Instance:
    """A running sandbox with its Runtime API, output reader and exit watcher."""

    def __init__(
        self, settings: Settings, happenings: queue.Queue, log: TextIO, scratch: Path
    ):
        self.happenings = happenings
        self.api = RuntimeApi(happenings)
        self.status_file = scratch / f"status-{uuid.uuid4().hex}.json"
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.log = log
        env = {
            **settings.image.env,
            **settings.env,
            # What Lambda sets for every function; a function cannot override them.
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "AWS_LAMBDA_FUNCTION_NAME": settings.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(settings.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{settings.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST/devmode",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": settings.region,
            "AWS_DEFAULT_REGION": settings.env.get(
                "AWS_DEFAULT_REGION", settings.region
            ),
            "_HANDLER": settings.command[-1],
            "TZ": ":UTC",
        }
        env.setdefault("LAMBDA_TASK_ROOT", "/var/task")
        command = sandbox.command(
            settings.root,
            settings.image.architecture,
            settings.command,
            settings.image.workdir,
            self.status_file,
        )
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.reader = threading.Thread(
            target=self._read_output, name="function-output", daemon=True
        )
        self.reader.start()
        self.watcher = threading.Thread(
            target=self._watch, name="function-exit", daemon=True
        )
        self.watcher.start()

    def _read_output(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.last_lines.append(line)
            print(line, file=self.log, flush=True)

    def _watch(self) -> None:
        self.process.wait()
        self.reader.join(timeout=30)  # all output is read before the exit is reported
        self.happenings.put(Happening("exit"))

    def exit_description(self) -> str:
        """How the function ended, as Lambda words it ('signal: segmentation fault', 'exit status 1')."""
        try:
            status = json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return f"exit status {self.process.returncode}"
        if "signal" in status:
            number = status["signal"]
            name = signal.Signals(number).name
            description = signal.strsignal(number) or name
            return f"signal: {description.lower()} ({name})"
        if "error" in status:
            return f"sandbox failed: {status['error']}"
        return f"exit status {status['exit_code']}"

    def memory_used_mb(self) -> int:
        return memory_used_mb(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # unshare's --kill-child ends the whole sandbox with it
        self.process.wait(timeout=60)
        self.watcher.join(timeout=60)
        if self.watcher.is_alive():
            raise RuntimeError(
                "the function's output was still open 60 s after it was killed"
            )
        self.api.close()
        self.status_file.unlink(missing_ok=True)


class Function:
    """A function's instances, one at a time. An instance lives at most as long as the thread
    that started it (see sandbox.py): call `invoke` from one long-lived thread."""

    def __init__(self, settings: Settings, scratch: Path, log: TextIO):
        self.settings = settings
        self.scratch = scratch
        self.log = log
        self.instance: Instance | None = None
        self.happenings: queue.Queue[Happening] = queue.Queue()

    def _next_happening(self, until: float) -> Happening | None:
        try:
            return self.happenings.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return None

    def _end_instance(self) -> None:
        if self.instance is not None:
            self.instance.stop()
            self.instance = None
        # What the old instance still reported belongs to no invocation.
        self.happenings = queue.Queue()

    def _crash_payload(self, request_id: str, instance: Instance) -> bytes:
        return _error_payload(
            "Runtime.ExitError",
            f"RequestId: {request_id} Error: Runtime exited with error: {instance.exit_description()}",
            lastOutput=list(instance.last_lines),
        )

    def _start(self, request_id: str) -> tuple[float | None, bytes | None, str]:
        """Starts an instance and waits for its init: (init ms, None, '') or (ms, error payload, status)."""
        self.happenings = queue.Queue()
        self.instance = instance = Instance(
            self.settings, self.happenings, self.log, self.scratch
        )
        until = instance.started + self.settings.init_timeout
        while True:
            happening = self._next_happening(until)
            elapsed = (time.monotonic() - instance.started) * 1000
            if happening is None:
                payload = _error_payload(
                    "Runtime.InitTimeout",
                    f"RequestId: {request_id} Error: init did not finish within {self.settings.init_timeout:.0f} s (--init-timeout)",
                )
                self._end_instance()
                return elapsed, payload, "timeout"
            if happening.kind == "next":
                return (happening.monotonic - instance.started) * 1000, None, ""
            if happening.kind == "init_error":
                self._end_instance()
                return elapsed, happening.body, "init_error"
            if happening.kind == "exit":
                payload = self._crash_payload(request_id, instance)
                self._end_instance()
                return elapsed, payload, "crash"

    def invoke(self, event: bytes) -> Outcome:
        request_id = str(uuid.uuid4())
        print(
            f"START RequestId: {request_id} Version: $LATEST", file=self.log, flush=True
        )
        init_ms = None
        if self.instance is None:
            init_ms, failure, status = self._start(request_id)
            if failure is not None:
                return self._finish(request_id, status, failure, 0.0, init_ms, 0)
        instance = self.instance
        started = time.monotonic()
        deadline = started + self.settings.timeout
        instance.api.hand_over(
            Invocation(
                request_id,
                event,
                int((time.time() + self.settings.timeout) * 1000),
                self.settings.function_arn,
            )
        )
        while True:
            happening = self._next_happening(deadline)
            duration = (time.monotonic() - started) * 1000
            if happening is None:
                memory = instance.memory_used_mb()
                print(
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {request_id} Task timed out after {self.settings.timeout:.2f} seconds",
                    file=self.log,
                    flush=True,
                )
                self._end_instance()
                payload = _error_payload(
                    "Sandbox.Timedout",
                    f"RequestId: {request_id} Error: Task timed out after {self.settings.timeout:.2f} seconds",
                )
                return self._finish(
                    request_id, "timeout", payload, duration, init_ms, memory
                )
            if (
                happening.kind in ("response", "error")
                and happening.request_id == request_id
            ):
                status = "success" if happening.kind == "response" else "error"
                return self._finish(
                    request_id,
                    status,
                    happening.body,
                    duration,
                    init_ms,
                    instance.memory_used_mb(),
                )
            if happening.kind == "exit":
                payload = self._crash_payload(request_id, instance)
                self._end_instance()
                return self._finish(request_id, "crash", payload, duration, init_ms, 0)
            # 'next' (the runtime waits for work) and stale reports need nothing.

    def _finish(
        self,
        request_id: str,
        status: str,
        payload: bytes,
        duration_ms: float,
        init_ms: float | None,
        memory_mb: int,
    ) -> Outcome:
        report = (
            f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
            # Container-image functions are billed for their init too.
            f"Billed Duration: {math.ceil(duration_ms + (init_ms or 0))} ms\t"
            f"Memory Size: {self.settings.memory_mb} MB\tMax Memory Used: {memory_mb} MB"
        )
        if init_ms is not None:
            report += f"\tInit Duration: {init_ms:.2f} ms"
        if status != "success" and status != "error":
            report += f"\tStatus: {status}"
        print(f"END RequestId: {request_id}", file=self.log, flush=True)
        print(report, file=self.log, flush=True)
        return Outcome(
            request_id, status, payload, duration_ms, init_ms, memory_mb, report
        )

    def close(self) -> None:
        self._end_instance()
