"""Reading the handler images that tests/images/BUILD.bazel exposes, and running programs inside them.

Each variant (arm64, amd64, lambda, edited) is a directory tests/images/<variant>/<handler>/ with
the image's manifest.json, config.json, digest, descriptor.json and OCI layout directory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path("tests/images")
HANDLERS = os.environ.get("HANDLERS", "").split()
ENTRYPOINT = ["/usr/bin/python3.13", "-m", "awslambdaric"]
ELF_MACHINES = {62: "amd64", 183: "arm64"}  # EM_X86_64, EM_AARCH64
PLATFORM_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
NONROOT = 65532  # the image's nonroot user and group (base/, /etc/passwd)

if "TEST_SRCDIR" not in os.environ:
    pytest.skip(
        "checks Bazel-built images: run it with bazel test", allow_module_level=True
    )


@dataclass(frozen=True)
class Image:
    variant: str
    name: str

    @property
    def directory(self) -> Path:
        return ROOT / self.variant / self.name

    @functools.cached_property
    def manifest_bytes(self) -> bytes:
        return (self.directory / "manifest.json").read_bytes()

    @functools.cached_property
    def manifest(self) -> dict:
        return json.loads(self.manifest_bytes)

    @functools.cached_property
    def config(self) -> dict:
        return json.loads((self.directory / "config.json").read_text())

    @property
    def digest(self) -> str:
        return (self.directory / "digest").read_text().strip()

    @property
    def layout(self) -> Path:
        return self.directory / "layout"

    @property
    def layers(self) -> list[dict]:
        return self.manifest["layers"]

    def blob(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.layout / "blobs" / algorithm / hex_digest

    def layer_blobs(self) -> list[Path]:
        return [self.blob(layer["digest"]) for layer in self.layers]

    def __str__(self) -> str:
        return f"{self.variant}/{self.name}"


def image(variant: str, name: str) -> Image:
    found = Image(variant, name)
    assert (found.directory / "manifest.json").is_file(), (
        f"{found.directory} is not in the test's data"
    )
    return found


def images(variant: str) -> list[Image]:
    assert len(HANDLERS) == 6, f"HANDLERS={HANDLERS}"
    return [image(variant, name) for name in HANDLERS]


def gzip_header(blob: Path) -> dict:
    """The fixed part of a gzip member header (RFC 1952): what it could leak is a name, a comment and a time."""
    with open(blob, "rb") as handle:
        header = handle.read(10)
    magic, method, flags, mtime = struct.unpack("<HBBI", header[:8])
    return {"magic": magic, "method": method, "flags": flags, "mtime": mtime}


def members(blob: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every entry of a layer blob in order, with the content of regular files (streamed, not seekable)."""
    with tarfile.open(blob, "r|*") as archive:
        for info in archive:
            content = archive.extractfile(info).read() if info.isreg() else None
            yield info, content


def elf_machine(content: bytes) -> str | None:
    """'amd64' / 'arm64' (or the raw number) for an ELF file, None for anything else."""
    if content[:4] != b"\x7fELF" or len(content) < 20:
        return None
    (machine,) = struct.unpack_from("<H", content, 18)
    return ELF_MACHINES.get(machine, str(machine))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def apply_layer(blob: Path, root: Path) -> None:
    """Applies one layer to `root` as a container runtime does: whiteouts delete, entries replace."""
    with tarfile.open(blob, "r|*") as archive:
        for info in archive:
            name = info.name.lstrip("/").removeprefix("./")
            parent, _, base = name.rpartition("/")
            target_dir = root / parent
            if (
                base == ".wh..wh..opq"
            ):  # opaque directory: drop what lower layers put there
                for child in target_dir.iterdir() if target_dir.is_dir() else ():
                    _remove(child)
                continue
            if base.startswith(".wh."):
                _remove(target_dir / base.removeprefix(".wh."))
                continue
            existing = root / name
            if not (info.isdir() and existing.is_dir() and not existing.is_symlink()):
                _remove(existing)
            # "tar": no absolute paths, no escaping `root`, no setuid bits; symlinks kept as they are.
            archive.extract(info, root, set_attrs=True, filter="tar")


def unpack(blobs: Sequence[Path], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for blob in blobs:
        apply_layer(blob, root)
    root.chmod(
        0o755
    )  # as a container's / is; a temporary directory's 0700 would lock out nonroot
    return root


def isolation_prefix(root: Path, workdir: str, as_nonroot: bool = True) -> list[str]:
    """Runs a command with `root` as / and `workdir` as its directory: as root with unshare's chroot
    (as the nonroot user, as Lambda runs functions unprivileged), else in a user namespace."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is missing"
    if os.geteuid() == 0:
        prefix = [unshare, f"--root={root}", f"--wd={workdir}"]
        if as_nonroot:
            prefix += [f"--setgid={NONROOT}", f"--setuid={NONROOT}"]
        return prefix
    probe = subprocess.run(
        [unshare, "--map-root-user", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(
            "needs root or unprivileged user namespaces to enter the root file system"
        )
    return [unshare, "--map-root-user", f"--root={root}", f"--wd={workdir}"]


def command_in_root(
    root: Path, arch: str, argv: Sequence[str], workdir: str = "/"
) -> list[str]:
    """The command line running `argv` (absolute paths inside `root`), under qemu-user for arm64 on amd64."""
    command = isolation_prefix(root, workdir)
    if PLATFORM_MACHINES[arch] != os.uname().machine:
        qemu = shutil.which(f"qemu-{PLATFORM_MACHINES[arch]}-static")
        assert qemu, (
            f"qemu-{PLATFORM_MACHINES[arch]}-static is missing: apt-get install qemu-user-static"
        )
        shutil.copy(qemu, root / "qemu-static")
        command.append("/qemu-static")
    return command + list(argv)


def image_env(config: dict, **extra: str) -> dict[str, str]:
    """The environment a runtime gives the container: the config's Env plus `extra`."""
    env = dict(entry.split("=", 1) for entry in config["config"]["Env"])
    env.update(extra)
    return env


def read_tar_text(blob: Path, name: str) -> str:
    for info, content in members(blob):
        if info.name == name:
            assert content is not None, f"{name} is not a regular file"
            return content.decode()
    raise AssertionError(f"{name} is not in {blob}")
