"""A py_binary built for linux/arm64 carries aarch64 wheels, for linux/amd64 x86_64 ones."""

import os
import struct

import pytest

ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def elf_machine(path: str) -> str:
    with open(path, "rb") as elf:
        header = elf.read(20)
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    (machine,) = struct.unpack_from("<H", header, 18)
    return ELF_MACHINES.get(machine, str(machine))


def runfiles(variable: str) -> list[str]:
    """The files `$(rootpaths ...)` named, with installed wheels (directories) walked."""
    files = []
    for path in os.environ[variable].split():
        if os.path.isdir(path):
            files += [
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in sorted(names)
            ]
        else:
            files.append(path)
    return files


def shared_objects(variable: str) -> list[str]:
    return [f for f in runfiles(variable) if f.endswith(".so") and "/numpy/" in f]


@pytest.mark.parametrize(
    ("variable", "machine"), [("ARM64_FILES", "aarch64"), ("AMD64_FILES", "x86_64")]
)
def test_numpy_extensions_match_the_target_platform(variable, machine):
    objects = shared_objects(variable)
    assert len(objects) > 5, f"expected numpy's extension modules among {variable}"
    assert {elf_machine(path) for path in objects} == {machine}
    wheel_dirs = {path.split("/site-packages/")[0] for path in objects}
    dist_infos = [
        f
        for f in runfiles(variable)
        if any(f.startswith(d) for d in wheel_dirs) and f.endswith(".dist-info/WHEEL")
    ]
    assert dist_infos, "the numpy wheel's WHEEL metadata is missing"
    with open(dist_infos[0]) as wheel:
        tags = [
            line.split(":", 1)[1].strip() for line in wheel if line.startswith("Tag:")
        ]
    assert tags and all(tag.endswith("_" + machine) for tag in tags), tags
