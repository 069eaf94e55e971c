"""The file that lets tools/bazel (sh) run Bazel without starting the Python launcher.

It holds sh variable assignments that tools/bazel sources. tools/bazel trusts them only while the
stamp files are unchanged (it computes the same md5 with `cat FILES | md5sum`), the user's
~/.bazelrc is as it was, and the server of the output base runs in the build environment's root.
"""

import hashlib
import os
import shlex
from pathlib import Path

# Work tree files that decide what tools/bazel runs; its fast path is valid while they are unchanged.
STAMP_FILES = (
    ".bazelversion",
    "tools/bazel",
    "tools/buildenv/launcher.py",
    "tools/buildenv/fast_path.py",
    "tools/buildenv/rootfs.py",
    "tools/buildenv/packages.txt",
    "tools/buildenv/apt-preferences",
)


def location(cache_root: Path, workspace: Path) -> Path:
    """Where tools/bazel looks for the file: keyed like Bazel's output base."""
    return cache_root / "fast-path" / hashlib.md5(str(workspace).encode()).hexdigest()


def stamp(workspace: Path) -> str:
    digest = hashlib.md5()
    for name in STAMP_FILES:
        path = workspace / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write(
    target: Path,
    *,
    workspace: Path,
    root: Path,
    base: Path,
    startup: list[str],
    namespace: list[str],
    path: str,
) -> None:
    """Writes the file atomically: `root` is the build environment, `base` Bazel's output base,
    `startup` Bazel's startup options, `namespace` nsenter's flags, `path` the PATH inside."""
    values = {
        "fast_stamp_files": " ".join(STAMP_FILES),
        "fast_stamp": stamp(workspace),
        "fast_user_rc": "yes" if (Path.home() / ".bazelrc").exists() else "no",
        "fast_server_pid_file": str(base / "server" / "server.pid.txt"),
        "fast_root": str(root),
        "fast_namespace": " ".join(namespace),
        "fast_path": path,
        "fast_startup": " ".join(shlex.quote(arg) for arg in startup),
    }
    text = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(target)
