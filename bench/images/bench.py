#!/usr/bin/env python3
"""Benchmark of the six handler images: build times, layer sizes, sharing, compressor throughput.

    bench/images/bench.py                         # linux/arm64 images (the Lambda default)
    bench/images/bench.py --bazel-flag=--config=amd64
    bench/images/bench.py --empty-repository-cache   # also download every wheel and .deb
    bench/images/bench.py --compress-python PY    # a python3.13 with zlib-ng and zstandard

Works in a copy of the work tree (at another path, so the edit below never touches the real
handler.py and nobody else's build sees it) with its own fresh output base and no disk or remote
cache, and measures:
  cold      `bazel build` of the six //handlers/<name>:image targets: Bazel server start, external
            repositories set up from the repository cache (wheels and .debs already downloaded,
            unless --empty-repository-cache), analysis, and every action;
  no-op     the same command again;
  edit      after appending a comment line to handlers/list_pending_batches/handler.py;
then the compressed and uncompressed size of every layer, the unique bytes of all six images
against the sum of their sizes, and runs bench/oci/compress.py (the layer compressor against
`gzip -6`) on the largest layer's tar. Prints markdown tables. Not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "reproducibility"))

from check import copy_work_tree, remove_tree

HANDLERS = [
    "compact_embeddings",
    "find_unembedded_lines",
    "list_pending_batches",
    "poll_line_embeddings",
    "poll_word_embeddings",
    "submit_to_openai",
]
IMAGES = [f"//handlers/{name}:image" for name in HANDLERS]
EDITED = "handlers/list_pending_batches/handler.py"
FRESH_FLAGS = [
    "--disk_cache=",
    "--remote_cache=",
    "--noremote_accept_cached",
    "--symlink_prefix=/",
]
IMAGE_INFO = '"//tools/oci/private:providers.bzl%OciImageInfo"'


def bazel(
    workspace: Path, startup: list[str], *args: str, capture: bool = False
) -> subprocess.CompletedProcess:
    command = [str(workspace / "tools" / "bazel"), *startup, *args]
    result = subprocess.run(
        command, cwd=workspace, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(
            f"`tools/bazel {' '.join(args[:3])} ...` failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


def timed_build(
    workspace: Path, startup: list[str], flags: list[str]
) -> tuple[float, str]:
    """Wall time of one build and Bazel's 'N processes: ...' summary line."""
    started = time.monotonic()
    result = bazel(workspace, startup, "build", *flags, *IMAGES)
    elapsed = time.monotonic() - started
    summary = next(
        (
            line.removeprefix("INFO: ")
            for line in result.stderr.splitlines()
            if re.match(r"INFO: \d+ process", line)
        ),
        "?",
    )
    return elapsed, summary


def image_layers(
    workspace: Path, startup: list[str], flags: list[str]
) -> dict[str, list[Path]]:
    """{handler: [layer blob paths, base first]} from the images' OciImageInfo."""
    execroot = Path(
        bazel(workspace, startup, "info", *flags, "execution_root").stdout.strip()
    )
    listing = bazel(
        workspace,
        startup,
        "cquery",
        *flags,
        " + ".join(IMAGES),
        "--output=starlark",
        f"--starlark:expr=str(target.label) + ' ' + ' '.join([layer.blob.path for layer in providers(target)[{IMAGE_INFO}].layers])",
    ).stdout
    layers = {}
    for line in listing.splitlines():
        label, *paths = line.split()
        layers[label.split("/")[-1].split(":")[0]] = [execroot / path for path in paths]
    return layers


def uncompressed_size(blob: Path) -> int:
    decompressor = zlib.decompressobj(31)
    size = 0
    with open(blob, "rb") as handle:
        while chunk := handle.read(1 << 20):
            size += len(decompressor.decompress(chunk))
    return size + len(decompressor.flush())


def size_text(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bazel-flag",
        action="append",
        default=[],
        help="extra build flag, e.g. --config=amd64",
    )
    parser.add_argument(
        "--empty-repository-cache",
        action="store_true",
        help="cold build downloads everything",
    )
    parser.add_argument(
        "--compress-python",
        default=sys.executable,
        help="python3 with zlib-ng and zstandard",
    )
    parser.add_argument("--tmpdir", default="/tmp")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-images-", dir=args.tmpdir))
    workspace = scratch / "work-tree"
    startup = [f"--output_base={scratch / 'output_base'}"]
    flags = FRESH_FLAGS + args.bazel_flag
    if args.empty_repository_cache:
        flags.append(f"--repository_cache={scratch / 'repository_cache'}")
    try:
        copy_work_tree(workspace)
        print(
            f"work tree copy {workspace}; {os.cpu_count()} CPUs; flags {' '.join(flags)}\n"
        )
        rows = []
        cache = (
            "empty repository cache"
            if args.empty_repository_cache
            else "wheels and .debs in the repository cache"
        )
        rows.append(
            (
                f"cold build of the six images (fresh output base, {cache})",
                *timed_build(workspace, startup, flags),
            )
        )
        if args.empty_repository_cache:
            downloaded = sum(
                path.stat().st_size
                for path in (scratch / "repository_cache").rglob("*")
                if path.is_file()
            )
            print(
                f"the cold build downloaded {size_text(downloaded)} into the empty repository cache"
            )
        rows.append(("no-op rebuild", *timed_build(workspace, startup, flags)))
        edited = workspace / EDITED
        original = edited.read_text()
        edited.write_text(original + "# benchmark edit\n")
        rows.append(
            (
                "rebuild after a comment added to list_pending_batches/handler.py",
                *timed_build(workspace, startup, flags),
            )
        )
        edited.write_text(original)
        rows.append(
            (
                "rebuild after restoring the file",
                *timed_build(workspace, startup, flags),
            )
        )
        print("| build | wall time | actions |\n| --- | ---: | --- |")
        for what, seconds, summary in rows:
            print(f"| {what} | {seconds:.1f} s | {summary} |")

        layers = image_layers(workspace, startup, flags)
        assert sorted(layers) == HANDLERS, sorted(layers)
        names = [
            "Debian runtime",
            "site-packages: ml",
            "site-packages: chromadb",
            "site-packages: aws",
        ]
        names += ["site-packages: rest", "first-party packages", "handler.py"]
        print(
            "\n| layer | compressed | uncompressed | ratio |\n| --- | ---: | ---: | ---: |"
        )
        unique: dict[Path, int] = {}
        total = 0
        for index, blob in enumerate(layers[HANDLERS[0]]):
            blobs = {layers[name][index] for name in HANDLERS}
            sizes = sorted(path.stat().st_size for path in blobs)
            raw = sorted(uncompressed_size(path) for path in blobs)
            what = names[index] if index < len(names) else f"layer {index}"
            if len(blobs) > 1:
                what += f" ({len(blobs)} different, smallest-largest)"
                compressed, uncompressed = (
                    f"{size_text(sizes[0])}-{size_text(sizes[-1])}",
                    f"{size_text(raw[0])}-{size_text(raw[-1])}",
                )
            else:
                compressed, uncompressed = size_text(sizes[0]), size_text(raw[0])
            print(
                f"| {what} | {compressed} | {uncompressed} | {sum(sizes) / sum(raw):.3f} |"
            )
        for name in HANDLERS:
            for blob in layers[name]:
                size = blob.stat().st_size
                unique[blob.resolve()] = size
                total += size
        print(
            f"\nsix images: {size_text(total)} compressed in total, {size_text(sum(unique.values()))} unique "
            f"({len(unique)} distinct layer blobs; configs and manifests are a few kB each)"
        )

        largest = max(unique, key=unique.get)
        tar = scratch / "largest-layer.tar"
        with open(largest, "rb") as source, open(tar, "wb") as target:
            decompressor = zlib.decompressobj(31)
            while chunk := source.read(1 << 20):
                target.write(decompressor.decompress(chunk))
            target.write(decompressor.flush())
        print(
            f"\ncompressor throughput on the largest layer's tar ({size_text(tar.stat().st_size)}):"
        )
        probe = subprocess.run(
            [args.compress_python, "-c", "import zlib_ng, zstandard"],
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            print(
                f"  skipped: {args.compress_python} lacks zlib-ng or zstandard; give --compress-python"
            )
        else:
            subprocess.run(
                [
                    args.compress_python,
                    str(REPO / "bench" / "oci" / "compress.py"),
                    "--input",
                    str(tar),
                    "--repeat",
                    "2",
                ],
                check=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            if (scratch / "output_base").exists():
                subprocess.run(
                    [str(workspace / "tools" / "bazel"), *startup, "shutdown"],
                    cwd=workspace,
                    check=False,
                )
            remove_tree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
