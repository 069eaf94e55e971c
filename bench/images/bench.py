#!/usr/bin/env python3
"""Benchmark of the six handler images: build times, layer sizes, sharing, compressor throughput.

    bench/images/bench.py                         # linux/arm64 images (the Lambda default)
    bench/images/bench.py --bazel-flag=--config=amd64
    bench/images/bench.py --compress-python PY    # a python3.13 with zlib-ng and zstandard

Works in a copy of the work tree (at another path, so the edit below never touches the real
handler.py and nobody else's build sees it) with its own fresh output base and no disk or remote
cache, and measures (wall clock, through tools/bazel as people run it):
  cold      `bazel build //handlers/...` (the six images) in an empty output base, three times:
            with empty repository and disk caches of its own (every wheel and .deb downloaded,
            every action run), then with the repository cache warm and no disk cache (every
            action run), then with the disk cache warm (what a second clone on this machine
            does); each includes the Bazel server's start, with --profile and
            `bazel analyze-profile`'s phase summary (where the time goes) and the CPU time
            the whole machine spent (a cold build is CPU-bound: over the cores, its floor);
  no-op     the same command again (median of --runs), after 15 untimed no-op builds and 10
            untimed edits that warm the new server's JVM as an edit loop does;
  edit      after appending a comment line to handlers/list_pending_batches/handler.py (median
            of --runs, a different line each time);
  overhead  `tools/bazel info server_pid`, and the same Bazel client command run directly in the
            server's namespace: the difference is what tools/bazel adds (medians);
then the compressed and uncompressed size of every layer, the unique bytes of all six images
against the sum of their sizes, and runs bench/oci/compress.py (the layer compressor against
`gzip -6`) on the largest layer's tar. Prints markdown tables. Not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
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
WARM_UP_BUILDS = 15
WARM_UP_EDITS = 10
# No remote cache (an S3 cache the user configured); each build names its disk cache.
FRESH_FLAGS = [
    "--remote_cache=",
    "--symlink_prefix=/",
]
IMAGE_INFO = '"//tools/oci/private:providers.bzl%OciImageInfo"'


def bazel(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(workspace / "tools" / "bazel"), *args]
    result = subprocess.run(
        command, cwd=workspace, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(
            f"`tools/bazel {' '.join(args[:3])} ...` failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"`{' '.join(command[:4])} ...` failed:\n{result.stderr[-4000:]}")
    return elapsed, result.stderr


def timed_build(workspace: Path, flags: list[str]) -> tuple[float, str]:
    """Wall time of one `tools/bazel build //handlers/...` and Bazel's summary lines."""
    elapsed, stderr = timed(
        [str(workspace / "tools" / "bazel"), "build", *flags, "//handlers/..."],
        workspace,
    )
    summary = "; ".join(
        line.removeprefix("INFO: ")
        for line in stderr.splitlines()
        if re.match(r"INFO: (\d+ process|Elapsed time)", line)
    )
    return elapsed, summary


def remove_output_base(workspace: Path) -> None:
    """Stops the work tree's Bazel server and deletes its output base."""
    bazel = str(workspace / "tools" / "bazel")
    info = subprocess.run(
        [bazel, "info", "output_base"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    subprocess.run([bazel, "shutdown"], cwd=workspace, check=False)
    if info.returncode == 0:
        remove_tree(Path(info.stdout.strip()))


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (/proc/stat: all but idle and
    iowait), in seconds."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def direct_bazel_command(workspace: Path) -> list[str]:
    """The Bazel client in the running server's namespace, without tools/bazel: what its fast
    path finally execs (tools/buildenv/fast_path.py)."""
    sys.path.insert(0, str(workspace / "tools" / "buildenv"))
    import fast_path
    import launcher

    values = dict(
        line.split("=", 1)
        for line in fast_path.location(launcher.cache_root(), workspace)
        .read_text()
        .splitlines()
    )
    values = {
        name: shlex.split(value)[0] if value else "" for name, value in values.items()
    }
    pid = Path(values["fast_server_pid_file"]).read_text().strip()
    return [
        "nsenter",
        f"--target={pid}",
        *values["fast_namespace"].split(),
        "--root",
        "--wd",
        "sh",
        "-c",
        launcher.ENTER_WORKDIR,
        str(workspace),
        *shlex.split(values["fast_startup"]),
    ]


def median_of(runs: int, measure) -> tuple[float, str]:
    results = [measure(run) for run in range(runs)]
    times = sorted(seconds for seconds, _ in results)
    return statistics.median(times), f"{runs} runs, {times[0]:.2f}-{times[-1]:.2f} s"


def profile_summary(workspace: Path, profile: Path) -> str:
    """The phase and critical-path lines of `bazel analyze-profile`."""
    result = bazel(workspace, "analyze-profile", str(profile))
    keep = re.compile(
        r"(phase|Total|critical path|Critical Path|Action )", re.IGNORECASE
    )
    lines = (result.stdout + result.stderr).splitlines()
    return "\n".join(line for line in lines if keep.search(line) and "INFO" not in line)


def image_layers(workspace: Path, flags: list[str]) -> dict[str, list[Path]]:
    """{handler: [layer blob paths, base first]} from the images' OciImageInfo."""
    execroot = Path(bazel(workspace, "info", *flags, "execution_root").stdout.strip())
    listing = bazel(
        workspace,
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
        "--compress-python",
        default=sys.executable,
        help="python3 with zlib-ng and zstandard",
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs per warm measurement (median)"
    )
    parser.add_argument(
        "--tmpdir",
        default="/tmp",
        help="where the work tree copy and its caches go: under /tmp or your home directory, "
        "which the build environment sees at the same path",
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-images-", dir=args.tmpdir))
    workspace = scratch / "work-tree"
    flags = FRESH_FLAGS + args.bazel_flag
    # Each cold build starts a new Bazel server in an empty output base; the caches are this
    # run's own, so the first build downloads every wheel and .deb and runs every action.
    repository_cache = f"--repository_cache={scratch / 'repository-cache'}"
    disk_cache = f"--disk_cache={scratch / 'disk-cache'}"
    try:
        copy_work_tree(workspace)
        print(
            f"work tree copy {workspace}; {os.cpu_count()} CPUs; flags {' '.join(flags)}\n"
        )
        rows = []
        cold_builds = [
            (
                "cold: empty repository cache and disk cache (downloads included)",
                [disk_cache],
            ),
            ("cold: fresh output base, repository cache warm", ["--disk_cache="]),
            ("cold: fresh output base, disk cache warm (a second clone)", [disk_cache]),
        ]
        for number, (what, caches) in enumerate(cold_builds):
            bazel(workspace, "clean", "--expunge")
            profile = scratch / f"cold{number}.profile.gz"
            # A cold build is CPU-bound: the CPU time it took, over the cores, bounds its wall time.
            busy = machine_cpu_seconds()
            seconds, summary = timed_build(
                workspace, [*flags, repository_cache, *caches, f"--profile={profile}"]
            )
            busy = machine_cpu_seconds() - busy
            summary += f"; {busy:.1f} CPU-s on the machine ({busy / os.cpu_count():.1f} s per core)"
            rows.append((what, seconds, summary))
            if number == 0:
                downloaded = sum(
                    path.stat().st_size
                    for path in (scratch / "repository-cache").rglob("*")
                    if path.is_file()
                )
                print(f"the first cold build downloaded {size_text(downloaded)}")
            print(
                f"where the time of '{what}' goes (bazel analyze-profile):\n"
                + profile_summary(workspace, profile)
                + "\n"
            )
        flags = [*flags, repository_cache, "--disk_cache="]
        # The first build with these flags is not a no-op: it finds the third cold build's
        # disk-cache hits through another cache configuration. The rows below are steady state.
        seconds, summary = timed_build(workspace, flags)
        print(f"first build without the disk cache: {seconds:.2f} s ({summary})")
        edited = workspace / EDITED
        original = edited.read_text()

        def edit_and_build(run: int) -> tuple[float, str]:
            edited.write_text(original + f"# benchmark edit {run}\n")
            seconds, summary = timed_build(workspace, flags)
            # Bazel learns of edits through inotify (--watchfs): an edit it missed builds nothing.
            if not re.search(
                r"\d+ (worker|processwrapper-sandbox|linux-sandbox|local)", summary
            ):
                sys.exit(f"the edit of {EDITED} rebuilt nothing: {summary}")
            return seconds, summary

        # A server in someone's edit loop has run many builds; a new one is slower while its JVM
        # compiles the paths a no-op and an edit take (a no-op: 0.74 s, then 0.3-0.4 s, then
        # 0.2-0.3 s after about 15 builds; 0.13-0.19 s in a server that has run hundreds).
        warm_up = [timed_build(workspace, flags)[0] for _ in range(WARM_UP_BUILDS)]
        warm_up += [edit_and_build(-run)[0] for run in range(1, WARM_UP_EDITS + 1)]
        edited.write_text(original)
        timed_build(workspace, flags)
        print(
            f"{WARM_UP_BUILDS} untimed no-op builds and {WARM_UP_EDITS} untimed edits to warm the "
            "server: " + " ".join(f"{seconds:.2f}" for seconds in warm_up) + " s\n"
        )
        rows.append(
            (
                "no-op build",
                *median_of(args.runs, lambda _: timed_build(workspace, flags)),
            )
        )
        rows.append(
            (
                "one handler.py edited, then build",
                *median_of(args.runs, edit_and_build),
            )
        )
        edited.write_text(original)
        timed_build(workspace, flags)
        entry = [str(workspace / "tools" / "bazel"), "info", "server_pid"]
        launcher_time, launcher_runs = median_of(
            args.runs * 2, lambda _: timed(entry, workspace)
        )
        direct = [*direct_bazel_command(workspace), "info", "server_pid"]
        direct_time, direct_runs = median_of(
            args.runs * 2, lambda _: timed(direct, workspace)
        )
        rows.append(("`tools/bazel info server_pid`", launcher_time, launcher_runs))
        rows.append(
            ("the same Bazel client command, run directly", direct_time, direct_runs)
        )
        rows.append(
            ("`tools/bazel` overhead (the difference)", launcher_time - direct_time, "")
        )
        print("| step | wall time | details |\n| --- | ---: | --- |")
        for what, seconds, summary in rows:
            print(f"| {what} | {seconds:.2f} s | {summary} |")

        layers = image_layers(workspace, flags)
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
            remove_output_base(workspace)
            remove_tree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
