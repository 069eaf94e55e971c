"""Tests of tools/oci/layers/bytecode.py: compiling in several processes gives the same pycs as
compiling in one, for the same files."""

import concurrent.futures
import os
import subprocess
import sys
import sysconfig

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


# Compiles typing.py with the layer tool's modules loaded, as its process has them.
LAYER_TOOL_COMPILE = """
import sys
import tools.oci.layer
from tools.oci.layers import bytecode

[(_, pyc, _)] = bytecode.compile_sources({"usr/lib/x/typing.py": sys.argv[1]}, sys.argv[2], sys.argv[3])
sys.stdout.buffer.write(open(pyc, "rb").read())
"""
FRESH_PY_COMPILE = """
import py_compile, sys
py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile="/usr/lib/x/typing.py", doraise=True,
                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
sys.stdout.buffer.write(open(sys.argv[2], "rb").read())
"""


def test_the_layer_tools_pycs_are_a_fresh_interpreters(tmp_path):
    """marshal's output depends on the strings the process interned: the pyc of typing.py
    differs when `typing` is imported. The layer tool must compile as a fresh interpreter does,
    or an import added to it would change image digests."""
    source = os.path.join(sysconfig.get_paths()["stdlib"], "typing.py")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    from_layer_tool = subprocess.run(
        [sys.executable, "-c", LAYER_TOOL_COMPILE, source, RUNNING_PYTHON, tmp_path],
        env=environment,
        capture_output=True,
        check=True,
    ).stdout
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH_PY_COMPILE, source, tmp_path / "fresh.pyc"],
        capture_output=True,
        check=True,
    ).stdout
    polluted = subprocess.run(
        [
            sys.executable,
            "-c",
            "import typing\n" + FRESH_PY_COMPILE,
            source,
            tmp_path / "p.pyc",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert polluted != fresh, (
        "this Python's marshal no longer depends on interned strings"
    )
    assert from_layer_tool == fresh
