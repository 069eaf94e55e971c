"""Reading the handler images that tests/images/BUILD.bazel exposes (tools/devmode runs them).

Each variant (arm64, amd64, lambda, edited) is a directory tests/images/<variant>/<handler>/ with
the image's manifest.json, config.json, digest, descriptor.json and OCI layout directory.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path("tests/images")
HANDLERS = os.environ.get("HANDLERS", "").split()
ENTRYPOINT = ["/usr/bin/python3.13", "-m", "awslambdaric"]
ELF_MACHINES = {62: "amd64", 183: "arm64"}  # EM_X86_64, EM_AARCH64
PLATFORM_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}

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


def read_tar_text(blob: Path, name: str) -> str:
    for info, content in members(blob):
        if info.name == name:
            assert content is not None, f"{name} is not a regular file"
            return content.decode()
    raise AssertionError(f"{name} is not in {blob}")
