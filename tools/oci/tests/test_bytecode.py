"""Tests of tools/oci/layers/bytecode.py: compiling in several processes gives the same pycs as
compiling in one, for the same files."""

import concurrent.futures
import sys

from tools.oci.layers import bytecode

RUNNING_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def sources(tmp_path, count):
    made = {}
    for number in range(count):
        source = tmp_path / "src" / f"mod{number}.py"
        source.parent.mkdir(exist_ok=True)
        source.write_text(f"VALUE = {number}\n")
        made[f"usr/lib/python3/pkg{number}/mod.py"] = str(source)
    broken = tmp_path / "src" / "py2.py"
    broken.write_text("print 'python 2'\n")
    made["usr/lib/python3/py2.py"] = str(broken)
    return made


def compiled(results):
    return {pyc_path: open(pyc, "rb").read() for pyc_path, pyc, _ in results}


def test_parallel_compilation_gives_the_serial_bytes(tmp_path, monkeypatch):
    files = sources(tmp_path, bytecode.PARALLEL_THRESHOLD + 30)
    pools = []

    class CountedPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bytecode.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(bytecode.concurrent.futures, "ProcessPoolExecutor", CountedPool)
    (tmp_path / "parallel").mkdir()
    parallel = list(
        bytecode.compile_sources(files, RUNNING_PYTHON, tmp_path / "parallel")
    )
    assert len(pools) == 1, "a layer this size should compile in a process pool"

    monkeypatch.setattr(bytecode, "PARALLEL_THRESHOLD", len(files) + 1)
    (tmp_path / "serial").mkdir()
    serial = list(bytecode.compile_sources(files, RUNNING_PYTHON, tmp_path / "serial"))
    assert len(pools) == 1

    assert [path for path, _, _ in parallel] == [path for path, _, _ in serial]
    assert compiled(parallel) == compiled(serial)
    assert len(parallel) == len(files) - 1  # the Python 2 file gets no pyc
    assert "usr/lib/python3/__pycache__/py2.cpython" not in " ".join(compiled(parallel))
