"""Debian root file systems made with mmdebstrap from a recipe, versioned by the recipe's hash.

The build environment (launcher.py) and the remote-execution worker environment
(worker_env.py) are both made here. An environment lives in `<directory>/<recipe hash>/`: it is
built in a staging directory and renamed into place when complete, under a lock, so an
interrupted provisioning is never used and a changed recipe never touches an environment that
another checkout still uses. Only the Python standard library is used: this runs on the host's
python3 before anything else exists.
"""

import errno
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

MIRROR = os.environ.get("BUILDENV_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "trixie"
EXTRA_SUITE = "forky"
NEEDED_BYTES = 3 * 1024**3
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


class LauncherError(Exception):
    """A problem the user must fix; printed as one line."""


def progress(message: str) -> None:
    print(f"buildenv: {message}", file=sys.stderr, flush=True)


def recipe_hash(files: list[Path], revision: str) -> str:
    """The hash naming an environment: its recipe files' names and contents, the suites."""
    digest = hashlib.sha256(revision.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{SUITE} {EXTRA_SUITE}".encode())
    return digest.hexdigest()[:16]


def read_packages(files: list[Path]) -> list[str]:
    """The package names in package-list files (one a line, `#` starts a comment)."""
    names = []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    return names


def ensure_mmdebstrap() -> str:
    found = shutil.which("mmdebstrap")
    if found:
        return found
    if os.geteuid() != 0:
        raise LauncherError(
            "the `mmdebstrap` command is missing; install it with `sudo apt-get install mmdebstrap`"
        )
    progress("installing mmdebstrap on the host (apt-get install mmdebstrap)")
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "mmdebstrap"],
    ):
        result = subprocess.run(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise LauncherError(f"`{' '.join(command)}` failed: {last}")
    return shutil.which("mmdebstrap") or "mmdebstrap"


def check_mirror() -> None:
    # Imported here: only provisioning needs it, and importing it took 15 ms of the launcher's ~40.
    import urllib.error
    import urllib.request

    url = f"{MIRROR}/dists/{SUITE}/Release"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=20
        ):
            pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise LauncherError(
            f"the Debian mirror is unreachable: {url}: {reason}"
        ) from None


def check_disk(directory: Path) -> None:
    free = shutil.disk_usage(directory).free
    if free < NEEDED_BYTES:
        raise LauncherError(
            f"disk full: {free // 2**20} MiB free in {directory}, the build environment needs "
            f"{NEEDED_BYTES // 2**30} GiB; free space or set XDG_CACHE_HOME to another disk"
        )


def disk_full(directory: Path) -> LauncherError:
    return LauncherError(
        f"disk full while provisioning under {directory}; free space or set XDG_CACHE_HOME "
        "to another disk"
    )


def remove_tree(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def provision(
    environment: Path,
    packages: list[str],
    preferences: list[Path],
    *,
    extra_hooks: tuple[str, ...] = (),
    what: str = f"Debian {SUITE} + Bazel from {EXTRA_SUITE}; takes about 1.5 minutes",
) -> None:
    """Builds the environment in a temporary directory and renames it into place.

    `preferences` are apt preferences files (concatenated), `extra_hooks` mmdebstrap customize
    hooks run after the packages are installed ("$1" is the root)."""
    mmdebstrap = ensure_mmdebstrap()
    check_disk(environment.parent)
    check_mirror()
    staging = environment.parent / f".staging-{environment.name}"
    # Left by an interrupted run; we hold the lock, so nobody else uses it.
    remove_tree(staging)
    staging.mkdir(parents=True)
    root = staging / "root"
    host_cas = " ".join(shlex.quote(str(p)) for p in sorted(HOST_CA_DIR.glob("*.crt")))
    preference_files = " ".join(shlex.quote(str(path)) for path in preferences)
    # HTTPS may leave this machine through an intercepting proxy whose CA the host trusts; Bazel's
    # Java downloader must trust it too (update-ca-certificates also rebuilds Java's keystore).
    customize = [
        f'mkdir -p "$1/usr/local/share/ca-certificates" && cp {host_cas} "$1/usr/local/share/ca-certificates/"'
        if host_cas
        else "true",
        'chroot "$1" update-ca-certificates --fresh >/dev/null',
        "printf '%s\\n' 'try-import %workspace%/tools/buildenv/offline.bazelrc' > \"$1/etc/bazel.bazelrc\"",
        *extra_hooks,
        'chroot "$1" dpkg-query -W -f \'${Package}\\t${Version}\\t${Architecture}\\n\' > "$1/../manifest.tsv"',
    ]
    command = [
        mmdebstrap,
        "--variant=minbase",
        "--mode=" + ("root" if os.geteuid() == 0 else "unshare"),
        '--aptopt=Acquire::Check-Valid-Until "false"',
        '--aptopt=Acquire::Retries "3"',
        (
            f'--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cat {preference_files} '
            '> "$1/etc/apt/preferences.d/buildenv"'
        ),
        "--include=" + ",".join(packages),
        *(f"--customize-hook={hook}" for hook in customize),
        SUITE,
        str(root),
        f"deb {MIRROR} {SUITE} main",
        f"deb {MIRROR} {EXTRA_SUITE} main",
    ]
    progress(f"provisioning {environment} ({what})")
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        tail = []
        for line in process.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-15:]
            if line.startswith(("I: ", "E: ", "W: ")):
                progress(line[3:])
    if process.returncode != 0:
        remove_tree(staging)
        details = "\n".join(tail)
        if "No space left on device" in details:
            raise disk_full(environment.parent)
        raise LauncherError(
            f"provisioning failed (mmdebstrap exit {process.returncode}); its last output:\n{details}"
        )
    staging.rename(environment)
    progress(f"ready: {environment}")


def ensure(environment: Path, make) -> Path:
    """`environment`, made by calling `make(environment)` under a lock unless it exists."""
    if (environment / "root").is_dir():
        return environment
    environment.parent.mkdir(parents=True, exist_ok=True)
    with open(environment.parent / f"{environment.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run provisions; we wait for it
        if not (environment / "root").is_dir():
            try:
                make(environment)
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise disk_full(environment.parent) from None
                raise
    return environment
