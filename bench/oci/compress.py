"""Speed, size and exact output of gzip encoders on one input, in the Python that runs it.

MB/s is input bytes per second of this process's CPU time (best of --repeat runs), which other
work on a busy machine disturbs much less than wall time; wall seconds are printed too.

    python3.13 bench/oci/compress.py --input layer.tar [--repeat 3] [--json out.json]

Every encoder writes a gzip stream the way the layer tool does (1 MiB chunks into a streaming
compressor, or the whole input at once for one-shot libraries) and its output is decompressed
once to check it. The sha256 of each output is printed so that runs on other CPUs (e.g.
aarch64 under qemu, see across_arches.py) can be compared byte for byte. Encoders whose module
is missing are listed as such. Not a test.
"""

import argparse
import hashlib
import json
import platform
import sys
import time
import zlib

CHUNK_SIZE = 1 << 20


def streaming(make_compressor):
    """Feeds 1 MiB chunks, as tools/oci/layer.py's ChunkedCompressor does."""

    def run(data):
        compressor = make_compressor()
        view = memoryview(data)
        parts = [
            compressor.compress(view[start : start + CHUNK_SIZE])
            for start in range(0, len(view), CHUNK_SIZE)
        ]
        parts.append(compressor.flush())
        return b"".join(parts)

    return run


def isal(level):
    from isal import isal_zlib

    return streaming(lambda: isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31))


def python_zlib(level):
    return streaming(lambda: zlib.compressobj(level, zlib.DEFLATED, 31))


def zlib_ng(level):
    from zlib_ng import zlib_ng as module

    return streaming(lambda: module.compressobj(level, module.DEFLATED, 31))


def libdeflate(level):
    import deflate

    return lambda data: deflate.gzip_compress(data, level)


def cramjam_gzip(level):
    import cramjam

    return lambda data: bytes(cramjam.gzip.compress(data, level=level))


def versions():
    found = {"python": platform.python_version(), "zlib": zlib.ZLIB_RUNTIME_VERSION}
    for module, attribute in [
        ("isal", "__version__"),
        ("zlib_ng", "__version__"),
        ("deflate", "__version__"),
        ("cramjam", "__version__"),
    ]:
        try:
            found[module] = getattr(__import__(module), attribute)
        except ImportError:
            pass
    try:
        from zlib_ng import zlib_ng as module

        found["zlib-ng library"] = module.ZLIBNG_RUNTIME_VERSION
    except ImportError:
        pass
    return found


ENCODERS = [
    ("ISA-L igzip level 0", lambda: isal(0)),
    ("ISA-L igzip level 1", lambda: isal(1)),
    ("ISA-L igzip level 2", lambda: isal(2)),
    ("zlib-ng level 1", lambda: zlib_ng(1)),
    ("zlib-ng level 2", lambda: zlib_ng(2)),
    ("zlib-ng level 3", lambda: zlib_ng(3)),
    ("zlib-ng level 6", lambda: zlib_ng(6)),
    ("libdeflate level 1 (one shot)", lambda: libdeflate(1)),
    ("libdeflate level 6 (one shot)", lambda: libdeflate(6)),
    ("cramjam gzip level 1 (one shot)", lambda: cramjam_gzip(1)),
    ("zlib (the Python's libz) level 1", lambda: python_zlib(1)),
    ("zlib (the Python's libz) level 6", lambda: python_zlib(6)),
]


def measure(data, names, repeat):
    rows = []
    for name, make in ENCODERS:
        if names and not any(part in name for part in names):
            continue
        try:
            encode = make()
        except ImportError as error:
            rows.append({"encoder": name, "missing": str(error)})
            continue
        best_wall = best_cpu = None
        for _ in range(repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            output = encode(data)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best_wall = wall if best_wall is None else min(best_wall, wall)
            best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        if zlib.decompress(output, 31) != data:
            raise SystemExit(f"{name}: the output does not decompress to the input")
        rows.append(
            {
                "encoder": name,
                "seconds": best_wall,
                "cpu_seconds": best_cpu,
                "mb_per_s": len(data) / 1e6 / best_cpu,
                "output_bytes": len(output),
                "sha256": hashlib.sha256(output).hexdigest(),
            }
        )
        print(format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def format_row(row):
    if "missing" in row:
        return f"{row['encoder']:<42} (not installed: {row['missing']})"
    return (
        f"{row['encoder']:<42} {row['seconds']:8.2f} {row['cpu_seconds']:8.2f} {row['mb_per_s']:8.1f} "
        f"{row['output_bytes'] / 1e6:10.2f}  {row['sha256'][:16]}"
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", required=True, help="the file to compress, e.g. a layer tar"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per encoder; the fastest counts"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only encoders whose name contains this",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    with open(args.input, "rb") as handle:
        data = handle.read()
    header = {
        "machine": platform.machine(),
        "input_bytes": len(data),
        "input_sha256": hashlib.sha256(data).hexdigest(),
        "versions": versions(),
    }
    print(
        f"{header['machine']}: input {len(data) / 1e6:.1f} MB "
        f"(sha256 {header['input_sha256'][:16]}), {header['versions']}",
        file=sys.stderr,
    )
    print(
        f"{'encoder':<42} {'seconds':>8} {'CPU s':>8} {'MB/s':>8} {'output MB':>10}  sha256",
        file=sys.stderr,
    )
    rows = measure(data, args.only, args.repeat)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(header, rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
