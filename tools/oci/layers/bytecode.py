"""__pycache__/<module>.cpython-XY.pyc for a layer's .py files.

Lambda's file system is read-only: without them Python recompiles every imported module at each
cold start. Unchecked-hash pycs hold no mtime (the layer's entries get a fixed one) and record the
image path as their source, so each depends only on its source: compiling in several processes
gives the same bytes as compiling in one. Files that do not compile (e.g. Python 2 test data in
some wheels) are left without one.
"""

import concurrent.futures
import importlib.util
import multiprocessing
import os
import py_compile
import sys
import warnings

from tools.oci import common

# Below this many files starting worker processes costs more than it saves. The big dependency
# layers (thousands of files) are on a cold build's critical path; handler layers are not.
PARALLEL_THRESHOLD = 200
MAX_PROCESSES = 8


def compile_sources(sources, version, directory):
    """Yields (pyc layer path, compiled file, source) in layer-path order for each
    {layer path: source file} that compiles, writing the pycs into `directory`."""
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
        compiled = [_compile(job) for job in jobs]
    for (path, source, pyc_file), ok in zip(jobs, compiled, strict=True):
        if ok:
            yield (
                importlib.util.cache_from_source(path, optimization=""),
                pyc_file,
                source,
            )


def _compile(job):
    path, source, pyc_file = job
    try:
        with warnings.catch_warnings():
            # SyntaxWarnings of third-party code (invalid escapes...) are not ours
            warnings.simplefilter("ignore")
            py_compile.compile(
                source,
                cfile=pyc_file,
                dfile="/" + path,
                doraise=True,
                optimize=0,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
    except (py_compile.PyCompileError, SyntaxError, ValueError):
        return False
    return True
