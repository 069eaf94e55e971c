"""Throughput of the layer compressor (tools/oci/layer.py) against `gzip -6` on the same bytes.

    python bench/oci/compress.py --dir DIR [--dir DIR ...]   # tars the directories first
    python bench/oci/compress.py --input some.tar

A realistic input is the unpacked wheels of the largest dependencies, e.g. the wheel
repositories Bazel fetched: `$(tools/bazel info output_base)/external/_main~pypi~pypi_{numpy,
onnxruntime,botocore,chromadb}_*`. Prints one line per encoder: wall time, MB/s of input,
output size and ratio; each output is decompressed once to check it. Not a test.
"""

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from tools.oci import layer


def tar_of_directories(directories):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in directories:
            archive.add(
                directory, arcname=os.path.basename(os.path.normpath(directory))
            )
    return buffer.getvalue()


def layer_compressor(compression, level):
    """The exact compressor of layer.py, fed in the tar writer's 10 KiB writes."""

    def run(data):
        sink = io.BytesIO()
        writer = layer.ChunkedCompressor(sink, layer.COMPRESSORS[compression](level))
        view = memoryview(data)
        for start in range(0, len(data), 10240):
            writer.write(view[start : start + 10240])
        writer.close()
        return sink.getvalue()

    return run


def python_zlib_6(data):
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def external(command):
    def run(data):
        return subprocess.run(
            command, input=data, capture_output=True, check=True
        ).stdout

    return run


def gunzip(data):
    return zlib.decompress(data, 47)


def unzstd(data):
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()


def encoders():
    yield "gzip -6 (GNU gzip, 1 core)", external(["gzip", "-6", "-n", "-c"]), gunzip
    yield "python zlib level 6 (1 core)", python_zlib_6, gunzip
    if shutil.which("pigz"):
        yield (
            "pigz -6 (2 threads)",
            external(["pigz", "-6", "-n", "-p", "2", "-c"]),
            gunzip,
        )
    for level in (0, 1, 2, 3):
        name = f"layer.py gzip: ISA-L level {level}"
        if level == layer.DEFAULT_LEVELS["gzip"]:
            name += " (default)"
        yield name, layer_compressor("gzip", level), gunzip
    yield "layer.py zstd level 3 (default)", layer_compressor("zstd", 3), unzstd


def whole_layer(directories, output_dir):
    """layer.py end to end: walk, sort, tar, hash twice, compress, write."""
    argv = [
        "--output",
        f"{output_dir}/layer.tar.gz",
        "--metadata",
        f"{output_dir}/l.json",
    ]
    for directory in directories:
        argv += [
            "--file",
            "/" + os.path.basename(os.path.normpath(directory)),
            directory,
        ]
    start = time.perf_counter()
    layer.main(argv)
    return time.perf_counter() - start, os.path.getsize(f"{output_dir}/layer.tar.gz")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", help="a file (e.g. a tar) to compress")
    parser.add_argument(
        "--dir", action="append", default=[], help="a directory to tar up as the input"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per encoder; the fastest counts"
    )
    args = parser.parse_args()
    if not args.input and not args.dir:
        parser.error("give --input FILE or --dir DIR")
    if args.input:
        with open(args.input, "rb") as handle:
            data = handle.read()
    else:
        data = tar_of_directories(args.dir)
    megabytes = len(data) / 1e6
    print(
        f"input: {megabytes:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()[:16]}, {os.cpu_count()} CPUs"
    )
    print(f"{'encoder':<48} {'seconds':>8} {'MB/s':>8} {'output MB':>10} {'ratio':>6}")
    for name, encode, decode in encoders():
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            output = encode(data)
            elapsed = time.perf_counter() - start
            best = elapsed if best is None else min(best, elapsed)
        if decode(output) != data:
            raise SystemExit(f"{name}: the output does not decompress to the input")
        report(name, best, megabytes, len(output), len(data))
    if args.dir:
        with tempfile.TemporaryDirectory() as output_dir:
            elapsed, size = whole_layer(args.dir, output_dir)
        report(
            "layer.py end to end (files -> layer blob)",
            elapsed,
            megabytes,
            size,
            len(data),
        )


def report(name, seconds, megabytes, output_size, input_size):
    print(
        f"{name:<48} {seconds:8.2f} {megabytes / seconds:8.1f} "
        f"{output_size / 1e6:10.1f} {output_size / input_size:6.3f}"
    )


if __name__ == "__main__":
    main()
