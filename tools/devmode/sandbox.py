"""Enters an unpacked root as Lambda runs a function: read-only /, a writable /tmp, its own
/proc, a minimal /dev, a non-root user, and only the environment it is given.

`command()` gives the host command line. It starts this file, with the host's Python, as
process 1 of new mount and PID namespaces (unshare; a user namespace too when not root). That
process makes the mounts, starts the function chrooted into the root, reaps orphans, and
writes how the function ended (exit code or signal) to a status file. When the host side kills
unshare (or the host side dies: setpriv's --pdeathsig), `--kill-child` takes the whole
namespace down with it: no stray processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

NONROOT = 65532  # the images' nonroot user and group (base/, /etc/passwd)
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
TMP_SIZE = "512m"  # Lambda's default ephemeral storage
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
QEMU_IN_ROOT = "/dev/.qemu-user-static"


class SandboxError(Exception):
    """Something this machine lacks to run the image, with what to install or change."""


def is_root() -> bool:
    return os.geteuid() == 0


def qemu_for(architecture: str) -> str | None:
    """The qemu-user binary the image's architecture needs here, None when it runs natively."""
    machine = MACHINES.get(architecture)
    if machine is None:
        raise SandboxError(
            f"images for {architecture!r} cannot run here: only {sorted(MACHINES)}"
        )
    if machine == os.uname().machine:
        return None
    qemu = shutil.which(f"qemu-{machine}-static")
    if not qemu:
        raise SandboxError(
            f"running a {architecture} image on {os.uname().machine} needs qemu-{machine}-static:"
            " apt-get install qemu-user-static (tools/bazel's build environment has it)"
        )
    return qemu


def _root_is_a_mount() -> bool:
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == "/" for line in mounts)


def command(
    root: Path,
    architecture: str,
    argv: Sequence[str],
    workdir: str,
    status_file: Path,
) -> list[str]:
    """The host command that runs `argv` (paths inside `root`) in the sandbox."""
    unshare = shutil.which("unshare")
    if not unshare:
        raise SandboxError("unshare is missing: apt-get install util-linux")
    # In a chroot (tools/bazel's build environment) / is no mount point and cannot be made
    # private; its mounts are private already, and _prepare() keeps the sandbox's own private.
    propagation = "private" if _root_is_a_mount() else "unchanged"
    namespaces = [
        "--mount",
        f"--propagation={propagation}",
        "--pid",
        "--fork",
        "--kill-child",
    ]
    if not is_root():
        namespaces.insert(0, "--map-root-user")
    qemu = qemu_for(architecture)
    # If the caller dies, even by SIGKILL, unshare is killed and takes the sandbox with it.
    setpriv = shutil.which("setpriv")
    orphan_guard = [setpriv, "--pdeathsig", "KILL"] if setpriv else []
    return [
        *orphan_guard,
        unshare,
        *namespaces,
        sys.executable,
        "-I",
        os.path.abspath(__file__),
        json.dumps(
            {
                "root": str(root),
                "workdir": workdir,
                # Only real root can switch to another user; in a user namespace uid 0 is the caller.
                "user": NONROOT if is_root() else None,
                "qemu": qemu,
                "status_file": str(status_file),
            }
        ),
        *argv,
    ]


def _mount(*arguments: str) -> None:
    result = subprocess.run(
        ["mount", *arguments], check=False, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SandboxError(f"mount {' '.join(arguments)}: {result.stderr.strip()}")


def _prepare(root: Path, qemu: str | None) -> None:
    _mount("--bind", str(root), str(root))
    _mount("--make-rprivate", str(root))
    _mount("-o", "remount,bind,ro", str(root))
    _mount(
        "-t", "tmpfs", "-o", f"mode=1777,size={TMP_SIZE}", "tmpfs", str(root / "tmp")
    )
    _mount("-t", "proc", "proc", str(root / "proc"))
    dev = root / "dev"
    _mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", str(dev))
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            (dev / name).touch()
            _mount("--bind", f"/dev/{name}", str(dev / name))
    (dev / "shm").mkdir(mode=0o1777)
    _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(dev / "shm"))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (dev / name).symlink_to(target)
    if qemu:
        (root / QEMU_IN_ROOT.lstrip("/")).touch()
        _mount("--bind", "-o", "ro", qemu, str(root / QEMU_IN_ROOT.lstrip("/")))


def _enter(root: str, workdir: str, user: int | None) -> None:
    os.chroot(root)
    os.chdir(workdir)
    if user is not None:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)


def main(settings: Mapping, argv: Sequence[str]) -> int:
    """Process 1 of the sandbox: mounts, runs the function, reaps, reports how it ended."""
    root = Path(settings["root"])
    status: dict = {}
    try:
        _prepare(root, settings["qemu"])
        program = [QEMU_IN_ROOT, *argv] if settings["qemu"] else list(argv)
        child = subprocess.Popen(
            program,
            # Process 1 of the sandbox runs no threads, so preexec_fn is safe here.
            preexec_fn=lambda: _enter(str(root), settings["workdir"], settings["user"]),  # noqa: PLW1509
            env=os.environ,
        )
    except (SandboxError, OSError) as error:
        status = {"error": f"{type(error).__name__}: {error}"}
    else:
        for forwarded in (signal.SIGTERM, signal.SIGINT):
            signal.signal(forwarded, lambda number, _frame: child.send_signal(number))
        while (
            True
        ):  # process 1 inherits every orphan: reap them until the function ends
            pid, wait_status = os.wait()
            if pid == child.pid:
                break
        if os.WIFSIGNALED(wait_status):
            status = {"signal": os.WTERMSIG(wait_status)}
        else:
            status = {"exit_code": os.WEXITSTATUS(wait_status)}
    Path(settings["status_file"]).write_text(json.dumps(status))
    if "error" in status:
        print(f"devmode sandbox: {status['error']}", file=sys.stderr)
        return 125
    return status.get("exit_code", 128 + status.get("signal", 0))


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1]), sys.argv[2:]))
