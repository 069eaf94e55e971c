"""How launcher.py runs Bazel when it must outlive it (to record build metrics afterwards): as a
child that behaves as if tools/bazel had exec'd it."""

import ctypes
import os
import signal
import subprocess


def run_as_if_executed(command: list[str], env: dict[str, str]) -> int:
    """Runs `command` as a child that behaves as if tools/bazel had exec'd it: SIGTERM and
    SIGHUP sent to us reach it, so does SIGINT unless the terminal already sent it to our whole
    process group (Ctrl-C), and it gets SIGTERM if we die (callers such as tools/cache/e2e.py
    stop a `tools/bazel run` server by signalling the pid they started). Returns its exit
    status, 128 + N when signal N ended it, as a shell would report."""
    # The launcher has one thread, so preexec_fn is safe here.
    child = subprocess.Popen(command, env=env, preexec_fn=_terminate_with_parent)  # noqa: PLW1509

    def forward(signum, _frame):
        if signum != signal.SIGINT or not _in_terminal_foreground():
            child.send_signal(signum)

    forwarded = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {signum: signal.signal(signum, forward) for signum in forwarded}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - status if status < 0 else status


def _terminate_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGTERM): survives the exec chain unshare/nsenter -> sh -> chroot
    # -> bazel (-> the `bazel run` program), which keeps one pid.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _in_terminal_foreground() -> bool:
    try:
        with open("/dev/tty", "rb") as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False
