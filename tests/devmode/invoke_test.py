"""The invoke command on an image of test handlers (behaviours.py, broken_import.py): what the
function sees, init errors, timeouts, crashes and the --serve endpoint; and a handler image for
arm64 under qemu-user against the //:dev stack."""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from receipt_dynamo import BatchStatus, BatchSummary, BatchType, ReceiptDynamoClient

from tools.devmode import sandbox
from tools.devmode.function import Function, Settings
from tools.devmode.image import Image
from tools.devmode.sandbox import NONROOT
from tools.devmode.stack import DevStack
from tools.devmode.unpack import RootCache

IMAGES = Path("tests/devmode")
CACHE = Path(os.environ.get("TEST_TMPDIR", "/tmp")) / "devmode-cache"
REPORT = re.compile(
    r"REPORT RequestId: [0-9a-f-]{36}\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
    r"Memory Size: (\d+) MB\tMax Memory Used: (\d+) MB(\tInit Duration: \d+\.\d\d ms)?"
    r"(\tStatus: \w+)?"
)
EXPECTED_UID = (
    NONROOT if os.geteuid() == 0 else 0
)  # a user namespace maps only its caller
HOST_SECRET = "host-secret-value-must-not-reach-the-function"


def image_dir(arch: str, name: str) -> Path:
    return IMAGES / arch / name


def invoke(*arguments: str, event: object = None, name: str = "devmode"):
    """The invoke command as `bazel run //<package>:invoke` runs it, on the test handlers' image."""
    command = [
        sys.executable,
        "-m",
        "tools.devmode.invoke",
        "--image",
        str(image_dir("amd64", name)),
        "--cache-dir",
        str(CACHE),
        *arguments,
    ]
    if event is not None:
        command += ["--event", "-"]
    return subprocess.run(
        command,
        input=None if event is None else json.dumps(event),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,  # the first run unpacks the base: a minute or two on a busy machine
        env={**os.environ, "HOST_SECRET": HOST_SECRET},
    )


def test_the_function_runs_as_lambda_runs_it():
    result = invoke(
        "--env",
        "GREETING=hello",
        "--timeout",
        "20",
        "--memory",
        "512",
        "--function-name",
        "echo",
        event={"id": 7},
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["event"] == {"id": 7}
    assert answer["uid"] == EXPECTED_UID
    assert answer["cwd"] == "/var/task"
    assert answer["root_writable"] == "Read-only file system"
    assert answer["tmp"] == "tmp is writable"
    assert (
        answer["function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    )
    assert 0 < answer["remaining_ms"] <= 20_000
    env = answer["env"]
    assert env["GREETING"] == "hello"
    assert "HOST_SECRET" not in env and HOST_SECRET not in json.dumps(env)
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "echo"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["_HANDLER"] == "behaviours.echo"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task" and env["LANG"] == "C.UTF-8"
    (report,) = [
        line for line in result.stderr.splitlines() if line.startswith("REPORT")
    ]
    match = REPORT.fullmatch(report)
    assert match, report
    assert match.group(1) == "512" and int(match.group(2)) > 0 and match.group(3)
    assert f"START RequestId: {answer['request_id']} Version: $LATEST" in result.stderr


def test_a_handler_error_is_printed_with_its_stack_trace():
    result = invoke("--handler", "behaviours.fail", event=[1, 2])
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "cannot handle [1, 2]"
    assert any("behaviours.py" in frame for frame in error["stackTrace"]), error
    assert "ValueError: cannot handle [1, 2]" in result.stderr


def test_an_import_failure_is_an_init_error():
    result = invoke("--handler", "broken_import.handler")
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["errorType"] == "Runtime.ImportModuleError", error
    assert "not_a_module_of_the_image" in error["errorMessage"]
    assert "\tStatus: init_error" in result.stderr


def test_a_slow_invocation_times_out():
    result = invoke(
        "--handler", "behaviours.sleep", "--timeout", "1", event={"seconds": 3600}
    )
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["errorType"] == "Sandbox.Timedout"
    assert error["errorMessage"].endswith("Task timed out after 1.00 seconds")
    assert re.search(r"[0-9a-f-]{36} Task timed out after 1\.00 seconds", result.stderr)
    assert 'sleeping {"seconds": 3600}' in result.stderr
    assert "\tStatus: timeout" in result.stderr


def test_a_crash_names_the_signal_and_the_last_output():
    result = invoke("--handler", "behaviours.segfault")
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["errorType"] == "Runtime.ExitError"
    assert error["errorMessage"].endswith(
        "Runtime exited with error: signal: segmentation fault (SIGSEGV)"
    ), error
    assert "about to read address 0" in error["lastOutput"]
    assert "last output of the function:\n  about to read address 0" in result.stderr


def _post(url: str, event: object) -> tuple[int, dict[str, str], object]:
    request = urllib.request.Request(
        url, data=json.dumps(event).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.status, dict(response.headers), json.loads(response.read())


def test_serve_answers_concurrent_invocations_in_order():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.devmode.invoke",
            "--image",
            str(image_dir("amd64", "devmode")),
            "--cache-dir",
            str(CACHE),
            "--serve",
            "0",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [log.put(line.rstrip("\n")) for line in process.stderr],
        daemon=True,
    )
    reader.start()
    seen: list[str] = []

    def await_log(pattern: str) -> None:
        while not any(re.search(pattern, line) for line in seen):
            try:
                seen.append(log.get(timeout=600))
            except queue.Empty:
                pytest.fail(
                    f"no log line matching {pattern!r} in 600 s:\n" + "\n".join(seen)
                )

    try:
        first_line = process.stdout.readline()
        match = re.fullmatch(
            r"devmode: serving (http://127\.0\.0\.1:\d+/\S+)\n", first_line
        )
        assert match, first_line
        url = match.group(1)
        assert url.endswith("/2015-03-31/functions/function/invocations")

        answers: dict[int, tuple] = {}
        threads = []
        for number in range(1, 6):
            # The first one is slow, so the others queue behind it.
            event = {"number": number, "sleep": 1.0 if number == 1 else 0}
            thread = threading.Thread(
                target=lambda n=number, e=event: answers.__setitem__(n, _post(url, e))
            )
            thread.start()
            threads.append(thread)
            await_log(rf"^devmode: request {number} received")
        for thread in threads:
            thread.join(timeout=600)
            assert not thread.is_alive(), "an invocation got no answer in 600 s"

        results = [answers[number] for number in range(1, 6)]
        assert [status for status, _, _ in results] == [200] * 5
        bodies = [body for _, _, body in results]
        assert [body["event"]["number"] for body in bodies] == [1, 2, 3, 4, 5]
        # One warm instance, answering in the order the requests arrived, one at a time.
        assert [body["invocation"] for body in bodies] == [1, 2, 3, 4, 5]
        for earlier, later in itertools.pairwise(bodies):
            assert earlier["finished"] <= later["started"]
        assert len({body["request_id"] for body in bodies}) == 5
        assert (
            sum("Init Duration" in line for line in seen if line.startswith("REPORT"))
            <= 1
        )

        status, headers, error = _post(url, {"sleep": "not a number"})
        assert status == 200 and headers["X-Amz-Function-Error"] == "Unhandled"
        assert error["errorType"] == "TypeError"
        _, _, after = _post(url, {"number": 7})
        # The failed invocation was the instance's 6th: it stays warm after a handler error.
        assert after["invocation"] == 7
    finally:
        process.send_signal(2)  # Ctrl-C
        assert process.wait(timeout=120) == 130
        reader.join(timeout=60)
        assert not reader.is_alive()


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        for task in Path(f"/proc/{pending.pop()}/task").iterdir():
            children = [int(c) for c in (task / "children").read_text().split()]
            found += children
            pending += children
    return found


def test_nothing_outlives_a_killed_invoke():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.devmode.invoke",
            "--image",
            str(image_dir("amd64", "devmode")),
            "--cache-dir",
            str(CACHE),
            "--serve",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[-1]
        assert _post(url, {"number": 1})[2]["invocation"] == 1  # the function is up
        sandbox_processes = _descendants(process.pid)
        # unshare, the sandbox's process 1 and the function (setpriv execs unshare).
        assert len(sandbox_processes) >= 3, sandbox_processes
        handles = [os.pidfd_open(pid) for pid in sandbox_processes]
    finally:
        process.kill()  # SIGKILL: no cleanup code of invoke's runs
        process.wait(timeout=60)
    try:
        for pid, handle in zip(sandbox_processes, handles):
            ready, _, _ = select.select([handle], [], [], 120)
            assert ready, (
                f"process {pid} of the sandbox still runs 120 s after invoke died"
            )
    finally:
        for handle in handles:
            os.close(handle)


@pytest.fixture(scope="module")
def stack():
    started = DevStack().start()
    yield started
    started.stop()


def test_an_arm64_handler_image_runs_under_qemu(stack, tmp_path):
    image = Image.from_directory(image_dir("arm64", "list_pending_batches"))
    assert image.architecture == "arm64"
    dynamo = ReceiptDynamoClient(
        stack.env["DYNAMODB_TABLE_NAME"], stack.client("dynamodb")
    )
    dynamo.put_many(
        [
            BatchSummary("arm-1", BatchType.LINE_EMBEDDING, "batch_a1", "t"),
            BatchSummary(
                "arm-done",
                BatchType.LINE_EMBEDDING,
                "batch_d",
                "t",
                status=BatchStatus.COMPLETED,
            ),
        ]
    )
    settings = Settings(
        image=image,
        root=RootCache(CACHE).root_for(image),
        function_name="list-pending-batches",
        env=stack.env,
        timeout=300,
        init_timeout=900,  # imports under qemu on a busy 2-core machine
    )
    with open(tmp_path / "function.log", "w") as log:
        function = Function(settings, tmp_path, log)
        try:
            valid = function.invoke(b'{"batch_type": "LINE_EMBEDDING"}')
            invalid = function.invoke(b'{"limit": 0}')
        finally:
            function.close()
    output = (tmp_path / "function.log").read_text()
    assert valid.ok, output
    assert json.loads(valid.payload) == [
        {"batch_id": "arm-1", "openai_batch_id": "batch_a1"}
    ]
    assert invalid.ok and invalid.init_duration_ms is None, (
        "the second invocation is warm"
    )
    assert json.loads(invalid.payload) == {
        "error": {
            "type": "InvalidInput",
            "message": "limit must be an integer from 1 to 1000; got 0",
        }
    }
    assert '"message": "rejected input"' in output


def test_the_arm64_image_imports_its_dependencies_under_qemu(tmp_path):
    image = Image.from_directory(image_dir("arm64", "list_pending_batches"))
    code = (
        "import chromadb, numpy, boto3, openai, awslambdaric, handler, platform;"
        " print(platform.machine(), handler.__file__)"
    )
    result = subprocess.run(
        sandbox.command(
            RootCache(CACHE).root_for(image),
            image.architecture,
            [image.entrypoint[0], "-c", code],
            image.workdir,
            tmp_path / "status.json",
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**image.env, "DYNAMODB_TABLE_NAME": "receipts"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aarch64", "/var/task/handler.py"]
    assert json.loads((tmp_path / "status.json").read_text()) == {"exit_code": 0}


def test_the_cache_unpacks_only_what_changed():
    """Two images sharing the base: the second unpack applies only its own top layer."""
    test_image = Image.from_directory(image_dir("amd64", "devmode"))
    handler_image = Image.from_directory(image_dir("amd64", "list_pending_batches"))
    assert test_image.layer_digests[:-1] == handler_image.layer_digests[:-1]
    RootCache(CACHE).root_for(test_image)
    cache = RootCache(CACHE)
    root = cache.root_for(handler_image)
    assert cache.layers_applied in (0, 1)  # 0 when an earlier test already ran it
    assert (root / "var/task/handler.py").is_file()
    assert not (root / "var/task/behaviours.py").exists()
    again = RootCache(CACHE)
    assert again.root_for(handler_image) == root and again.layers_applied == 0
