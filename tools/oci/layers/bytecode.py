"""__pycache__/<module>.cpython-XY.pyc for a layer's .py files.

Lambda's file system is read-only: without them Python recompiles every imported module at each
cold start.

marshal writes an object shared by reference (FLAG_REF) when its reference count is above one, so
a pyc's bytes depend on which strings the compiling process had already interned: importing
`typing` into the layer tool changes the pyc of typing_extensions. The layer tool therefore keeps
its imports lean, and test_bytecode checks that its pycs equal a fresh interpreter's py_compile. Unchecked-hash pycs hold no mtime (the layer's entries get a fixed one) and record the
image path as their source, so each depends only on its source: compiling in several processes
gives the same bytes as compiling in one. Files that do not compile (e.g. Python 2 test data in
some wheels) are left without one. A source is a file, or a member of a wheel (read from the zip,
which is never unpacked); both give the bytes py_compile would.
"""

import concurrent.futures
import importlib.util
import marshal
import multiprocessing
import os
import sys
import warnings
import zipfile

from tools.oci import common

# Below this many files starting worker processes costs more than it saves. The big dependency
# layers (thousands of files) are on a cold build's critical path; handler layers are not.
PARALLEL_THRESHOLD = 200
MAX_PROCESSES = 8


class WheelMember:
    """A file inside a wheel: the .whl path and the member name."""

    def __init__(self, wheel, member):
        self.wheel = wheel
        self.member = member

    def __str__(self):
        return f"{self.wheel}:{self.member}"


def compile_sources(sources, version, directory):
    """Yields (pyc layer path, compiled file, source) in layer-path order for each
    {layer path: source file or WheelMember} that compiles, writing the pycs into `directory`."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version != running:
        raise common.UsageError(
            f"--py-compile {version}: the image's Python is {version} but this tool runs "
            f"Python {running}, whose bytecode it cannot load; run the layer tool with "
            f"Python {version}, or do not compile"
        )
    jobs = [
        (path, source, os.path.join(directory, f"{index}.pyc"))
        for index, (path, source) in enumerate(sorted(sources.items()))
    ]
    processes = min(len(os.sched_getaffinity(0)), MAX_PROCESSES)
    if processes > 1 and len(jobs) >= PARALLEL_THRESHOLD:
        # fork: the children need nothing re-imported, and the layer tool (or its persistent
        # worker) has no other threads at this point.
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(processes, context) as pool:
            compiled = list(pool.map(_compile, jobs, chunksize=64))
    else:
        try:
            compiled = [_compile(job) for job in jobs]
        finally:
            # A persistent worker serves many layers; forked pool workers must not share these
            # handles' file offsets.
            _close_wheels()
    for (path, source, pyc_file), ok in zip(jobs, compiled, strict=True):
        if ok:
            yield (
                importlib.util.cache_from_source(path, optimization=""),
                pyc_file,
                source,
            )


# Open wheels of this process (the layer tool's, or a pool worker's): a member is read without
# re-reading the zip's central directory each time.
_open_wheels = {}


def _read_source(source):
    if isinstance(source, WheelMember):
        archive = _open_wheels.get(source.wheel)
        if archive is None:
            archive = _open_wheels[source.wheel] = zipfile.ZipFile(source.wheel)
        return archive.read(source.member)
    with open(source, "rb") as handle:
        return handle.read()


def _close_wheels():
    while _open_wheels:
        _open_wheels.popitem()[1].close()


def _compile(job):
    """py_compile.compile(source, cfile, dfile, optimize=0, UNCHECKED_HASH), from bytes."""
    path, source, pyc_file = job
    data = _read_source(source)
    try:
        with warnings.catch_warnings():
            # SyntaxWarnings of third-party code (invalid escapes...) are not ours
            warnings.simplefilter("ignore")
            code = compile(data, "/" + path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return False
    # The hash-based pyc layout of PEP 552: magic, flags (hash-based, unchecked), source hash.
    pyc = bytearray(importlib.util.MAGIC_NUMBER)
    pyc += (0b01).to_bytes(4, "little")
    pyc += importlib.util.source_hash(data)
    pyc += marshal.dumps(code)
    with open(pyc_file, "wb") as handle:
        handle.write(pyc)
    return True
