"""launcher.py's child: signals sent to the launcher reach Bazel, and Bazel ends with it."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest

# A stand-in for a `tools/bazel run` server: says it is ready, then reports the signal that
# ends it.
SERVER = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
print("ready", flush=True)
number = signal.sigwait({signal.SIGTERM, signal.SIGINT})
print(f"server got {signal.Signals(number).name}", flush=True)
sys.exit(5)
"""


@pytest.fixture
def start_launcher():
    """Starts a process that runs SERVER through run_as_if_executed, as launcher.py does; at
    the end kills whatever of its session is left (a failed test must not leak a server)."""
    started = []

    def start() -> subprocess.Popen:
        launcher = (
            "import sys\n"
            f"sys.path[:0] = {sys.path!r}\n"
            "import child\n"
            f"sys.exit(child.run_as_if_executed([sys.executable, '-c', {SERVER!r}], {{}}))\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", launcher],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # no terminal: as when a script starts tools/bazel run
        )
        started.append(process)
        assert process.stdout.readline() == "ready\n", "the server did not start"
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_to_the_launcher_reach_the_command(start_launcher, signum):
    process = start_launcher()
    process.send_signal(signum)
    out, _ = process.communicate(timeout=60)
    assert out == f"server got {signum.name}\n"
    assert process.returncode == 5


def test_the_command_is_terminated_when_the_launcher_is_killed(start_launcher):
    process = start_launcher()
    process.kill()
    # stdout closes only when the server, which shares it, has exited too.
    out, _ = process.communicate(timeout=60)
    assert out == "server got SIGTERM\n"
