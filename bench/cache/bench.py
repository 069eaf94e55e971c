"""Benchmark of the S3 remote cache: a build in a fresh output base, cold vs with a warm S3 cache.

    python3 bench/cache/bench.py [--targets //handlers/...]

Every scenario builds TARGETS in a new copy of the workspace (so a new output base and Bazel
server), against moto's S3 on loopback:
    cold       no remote cache and no disk cache: every action runs
    populate   through an empty cache server: every action runs and is uploaded to S3
    warm-s3    through a new cache server with an empty disk tier: outputs come from S3
    warm-disk  through that server again: outputs come from its disk tier
It prints wall time (launcher, Bazel server start and build), Bazel's own elapsed time and
critical path, its spawn summary and the bytes each scenario moved.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "cache"))
import e2e

COUNTERS = ("bytes_out", "bytes_in", "s3_bytes_down", "s3_bytes_up")


def build(workdir: Path, name: str, url: str | None, targets: list[str]) -> dict:
    workspace = e2e.copy_workspace(workdir / name)
    before = e2e.cache_status(url)["totals"] if url else dict.fromkeys(COUNTERS, 0)
    try:
        e2e.say(f"{name}: bazel build {' '.join(targets)}")
        run = e2e.run_bazel(
            workspace,
            ["build", *e2e.cache_flags(workspace, url), *targets],
            workdir / f"{name}.log",
        )
        if run.exit_code != 0:
            raise e2e.CheckFailed(f"{name} build failed ({run.log}):\n{run.tail()}")
        after = e2e.wait_for_uploads(url)["totals"] if url else before
    finally:
        e2e.expunge(workspace)
    timing = re.search(r"Elapsed time: ([\d.]+)s, Critical Path: ([\d.]+)s", run.output)
    return {
        "scenario": name,
        "seconds": run.seconds,
        "bazel_elapsed": float(timing.group(1)) if timing else float("nan"),
        "critical_path": float(timing.group(2)) if timing else float("nan"),
        "executed": run.executed,
        "cache_hits": run.processes.get("remote cache hit", 0),
        **{counter: after[counter] - before[counter] for counter in COUNTERS},
    }


def mib(count: int) -> str:
    return f"{count / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--targets", nargs="+", default=e2e.DEFAULT_TARGETS)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    rows = []
    try:
        with e2e.Services(workdir) as services:
            rows.append(build(workdir, "cold", None, args.targets))
            rows.append(
                build(
                    workdir, "populate", services.start_cache("populate"), args.targets
                )
            )
            services.stop_cache("populate")
            warm = services.start_cache("warm")
            rows.append(build(workdir, "warm-s3", warm, args.targets))
            rows.append(build(workdir, "warm-disk", warm, args.targets))
    except (e2e.CheckFailed, e2e.ensure_server.CacheServerError) as error:
        e2e.say(f"FAIL: {error}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nS3 remote cache benchmark: bazel build {' '.join(args.targets)}, fresh output bases"
    )
    header = (
        f"{'scenario':<10} {'wall s':>7} {'bazel s':>7} {'crit. s':>7} {'executed':>8} "
        f"{'cache hits':>10} "
        f"{'to Bazel MiB':>12} {'from Bazel MiB':>14} {'S3 down MiB':>11} {'S3 up MiB':>9}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['scenario']:<10} {row['seconds']:>7.1f} {row['bazel_elapsed']:>7.1f} "
            f"{row['critical_path']:>7.1f} {row['executed']:>8} "
            f"{row['cache_hits']:>10} {mib(row['bytes_out']):>12} {mib(row['bytes_in']):>14} "
            f"{mib(row['s3_bytes_down']):>11} {mib(row['s3_bytes_up']):>9}"
        )
    cold, warm = rows[0]["seconds"], rows[2]["seconds"]
    print(
        f"warm S3 cache vs cold: {cold / warm:.2f}x faster ({cold:.1f}s -> {warm:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
