"""The Debian runtime of both architectures: file system contents, and Python really starting.

amd64 runs natively, arm64 under qemu-aarch64-static, each chrooted into the unpacked root file
system (chroot as root, a user namespace otherwise) so that nothing of the host leaks in.
"""

import gzip
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOTFS = {arch: Path(f"base/rootfs_{arch}.tar") for arch in ("amd64", "arm64")}
LOCK = json.loads(Path("base/debian.lock").read_text())
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64
PLATFORM_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}

# Every part of the runtime that a Lambda handler relies on, checked from inside the image.
PROBE = r"""
import asyncio, bz2, ctypes, decimal, hashlib, importlib.util, json, locale, lzma, mimetypes
import platform, pwd, socket, sqlite3, ssl, sys, uuid, zlib, zoneinfo
from datetime import datetime

async def answer():
    return 42

context = ssl.create_default_context()
for library in ("libstdc++.so.6", "libgomp.so.1", "libgcc_s.so.1"):
    ctypes.CDLL(library)
print(json.dumps({
    "machine": platform.machine(),
    "version": list(sys.version_info[:2]),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "ca_certificates": context.cert_store_stats()["x509_ca"],
    "locale": locale.setlocale(locale.LC_ALL, ""),
    "filesystem_encoding": sys.getfilesystemencoding(),
    "new_york_offset_hours": datetime(2024, 1, 15, tzinfo=zoneinfo.ZoneInfo("America/New_York"))
        .utcoffset().total_seconds() / 3600,
    "sqlite": sqlite3.connect(":memory:").execute("select 6 * 7").fetchone()[0],
    "compression": all(m.decompress(m.compress(b"x" * 100)) == b"x" * 100 for m in (bz2, lzma, zlib)),
    "sha3": hashlib.sha3_256(b"").hexdigest()[:8],
    "decimal": str(decimal.Decimal("0.1") + decimal.Decimal("0.2")),
    "asyncio": asyncio.run(answer()),
    "https_port": socket.getservbyname("https"),
    "json_mime": mimetypes.guess_type("x.json")[0],
    "nonroot_uid": pwd.getpwnam("nonroot").pw_uid,
    "uuid_version": uuid.uuid4().version,
    "json_pyc_exists": __import__("os").path.exists(importlib.util.cache_from_source(json.__file__)),
}))
"""


def tar_members(arch: str) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(ROOTFS[arch]) as tar:
        return {info.name: info for info in tar.getmembers()}


def read_member(arch: str, name: str) -> bytes:
    with tarfile.open(ROOTFS[arch]) as tar:
        return tar.extractfile(name).read()


def isolation_prefix(root: Path) -> list[str]:
    """How to run a command with `root` as its /: chroot as root, else a user namespace."""
    chroot, unshare = shutil.which("chroot"), shutil.which("unshare")
    if os.geteuid() == 0 and chroot:
        # As the nonroot user: Lambda runs functions as an unprivileged user too.
        return [chroot, "--userspec=65532:65532", str(root)]
    if unshare:
        probe = subprocess.run(
            [unshare, "--map-root-user", "true"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return [unshare, "--map-root-user", f"--root={root}"]
    pytest.skip(
        "needs root (chroot) or unprivileged user namespaces to enter the root file system"
    )


def run_python(arch: str, root: Path, code: str) -> subprocess.CompletedProcess:
    command = isolation_prefix(root)
    if arch == "arm64":
        qemu = shutil.which("qemu-aarch64-static")
        assert qemu, "qemu-aarch64-static is missing: apt-get install qemu-user-static"
        shutil.copy(qemu, root / "qemu-aarch64-static")
        command.append("/qemu-aarch64-static")
    command += ["/usr/bin/python3.13", "-c", code]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"LANG": "C.UTF-8", "PATH": "/usr/bin"},
    )


@pytest.fixture(scope="module", params=sorted(ROOTFS))
def unpacked(request, tmp_path_factory) -> tuple[str, Path]:
    arch = request.param
    root = tmp_path_factory.mktemp(f"rootfs_{arch}")
    subprocess.run(
        ["tar", "-xf", str(ROOTFS[arch].resolve()), "-C", str(root)], check=True
    )
    root.chmod(
        0o755
    )  # as a container's / is; mktemp's 0700 would lock out the nonroot user
    return arch, root


def test_python_starts_and_the_runtime_works(unpacked):
    arch, root = unpacked
    result = run_python(arch, root, PROBE)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts == {
        "machine": PLATFORM_MACHINE[arch],
        "version": [3, 13],
        "executable": "/usr/bin/python3.13",
        "prefix": "/usr",
        "ca_certificates": facts["ca_certificates"],
        "locale": "C.UTF-8",
        "filesystem_encoding": "utf-8",
        "new_york_offset_hours": -5.0,
        "sqlite": 42,
        "compression": True,
        "sha3": "a7ffc6f8",
        "decimal": "0.3",
        "asyncio": 42,
        "https_port": 443,
        "json_mime": "application/json",
        "nonroot_uid": 65532,
        "uuid_version": 4,
        "json_pyc_exists": True,
    }
    assert facts["ca_certificates"] > 100


def test_a_failing_import_fails(unpacked):
    """The probe above would be worthless if errors inside the image went unnoticed."""
    arch, root = unpacked
    result = run_python(arch, root, "import tkinter")
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("arch", sorted(ROOTFS))
def test_entries_are_normalized(arch):
    for info in tar_members(arch).values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
            0,
            0,
            0,
            "",
            "",
        ), info.name
        if not info.issym():
            assert info.mode & 0o444 == 0o444, (
                f"{info.name} is not readable by everyone"
            )
        assert not info.name.startswith(
            ("usr/share/man/", "usr/share/locale/", "usr/share/info/")
        )
        if info.name.startswith("usr/share/doc/") and info.name.count("/") > 3:
            assert info.name.endswith("/copyright"), info.name


@pytest.mark.parametrize("arch", sorted(ROOTFS))
def test_interpreter_is_a_real_file_of_the_architecture(arch):
    members = tar_members(arch)
    interpreter = members["usr/bin/python3.13"]
    assert interpreter.isfile() and interpreter.mode == 0o755
    header = read_member(arch, "usr/bin/python3.13")[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch]
    assert members["usr/bin/python3"].linkname == "python3.13"
    assert members["tmp"].mode == 0o1777
    assert members["var/task"].isdir()


@pytest.mark.parametrize("arch", sorted(ROOTFS))
def test_scanners_see_every_locked_package(arch):
    members = tar_members(arch)
    assert members["etc/os-release"].linkname == "../usr/lib/os-release"
    os_release = read_member(arch, "usr/lib/os-release").decode()
    assert "\nID=debian\n" in os_release
    assert '\nVERSION_ID="13"\n' in os_release
    locked = {entry["name"]: entry["version"] for entry in LOCK["packages"][arch]}
    recorded = {
        name.removeprefix("var/lib/dpkg/status.d/")
        for name in members
        if name.startswith("var/lib/dpkg/status.d/") and not name.endswith(".md5sums")
    }
    assert recorded == set(locked)
    for name, version in locked.items():
        status = read_member(arch, f"var/lib/dpkg/status.d/{name}").decode()
        assert f"Package: {name}\nStatus: install ok installed\n" in status
        assert f"\nVersion: {version}\n" in status


@pytest.mark.parametrize("arch", sorted(ROOTFS))
def test_size(arch):
    """Not a benchmark: a budget that catches an accidentally pulled-in dependency tree."""
    uncompressed = ROOTFS[arch].stat().st_size
    compressed = len(gzip.compress(ROOTFS[arch].read_bytes(), compresslevel=6, mtime=0))
    print(
        f"{arch}: {uncompressed / 1e6:.1f} MB uncompressed, {compressed / 1e6:.1f} MB gzip -6"
    )
    assert uncompressed < 120e6
    assert compressed < 40e6
