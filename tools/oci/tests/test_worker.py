"""The layer tool as a Bazel persistent worker (JSON protocol): the same bytes as a standalone
run, errors reported per request, and the worker still serving after a failed request."""

import json
import os
import subprocess
import sys
from pathlib import Path

TIMEOUT = 120  # seconds; generous for a loaded 2-core machine


def tool_command(*args):
    return [sys.executable, "-m", "tools.oci.layer", *args]


def tool_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def params_file(directory: Path, name: str, arguments: list[str]) -> str:
    path = directory / f"{name}.params"
    path.write_text("\n".join(arguments) + "\n")
    return f"@{path}"


def layer_arguments(directory: Path, name: str, source: Path) -> list[str]:
    return [
        "--output",
        str(directory / f"{name}.tar.gz"),
        "--metadata",
        str(directory / f"{name}.json"),
        "--file",
        "/var/task/handler.py",
        str(source),
    ]


class Worker:
    def __init__(self):
        self.process = subprocess.Popen(
            tool_command("--persistent_worker"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=tool_env(),
            text=True,
        )

    def request(self, arguments: list[str], request_id: int = 0) -> dict:
        line = json.dumps({"arguments": arguments, "requestId": request_id})
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        response = self.process.stdout.readline()
        assert response, "the worker closed stdout instead of answering a WorkRequest"
        return json.loads(response)

    def close(self):
        self.process.stdin.close()
        assert self.process.wait(timeout=TIMEOUT) == 0, (
            "the worker must exit cleanly when Bazel closes its stdin"
        )


def test_worker_output_is_identical_to_a_standalone_run(tmp_path):
    source = tmp_path / "handler.py"
    source.write_text("def handler(event, context):\n    return event\n")
    standalone = layer_arguments(tmp_path, "standalone", source)
    subprocess.run(
        tool_command(params_file(tmp_path, "standalone", standalone)),
        env=tool_env(),
        check=True,
        timeout=TIMEOUT,
    )

    worker = Worker()
    try:
        for request_id in (1, 2):  # the second request runs in the same process
            name = f"worker{request_id}"
            arguments = layer_arguments(tmp_path, name, source)
            response = worker.request(
                [params_file(tmp_path, name, arguments)], request_id
            )
            assert response == {"exitCode": 0, "output": "", "requestId": request_id}
            for suffix in (".tar.gz", ".json"):
                assert (tmp_path / f"{name}{suffix}").read_bytes() == (
                    tmp_path / f"standalone{suffix}"
                ).read_bytes()
    finally:
        worker.close()


def test_a_failed_request_is_reported_and_the_worker_serves_on(tmp_path):
    source = tmp_path / "handler.py"
    source.write_text("x = 1\n")
    worker = Worker()
    try:
        bad = layer_arguments(tmp_path, "bad", tmp_path / "missing.py")
        response = worker.request([params_file(tmp_path, "bad", bad)], 7)
        assert response["requestId"] == 7
        assert response["exitCode"] != 0
        assert "missing.py" in response["output"]
        assert not (tmp_path / "bad.tar.gz").exists(), "no half-written output"

        usage = worker.request([params_file(tmp_path, "usage", ["--dir", "/x"])], 8)
        assert usage["exitCode"] == 2
        assert "the following arguments are required: --output" in usage["output"]

        good = layer_arguments(tmp_path, "good", source)
        response = worker.request([params_file(tmp_path, "good", good)], 9)
        assert response["exitCode"] == 0, response["output"]
        assert (tmp_path / "good.tar.gz").stat().st_size > 0
    finally:
        worker.close()
