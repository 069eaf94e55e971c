"""Benchmark of the S3 remote cache: a build in a fresh output base, cold vs with a warm S3 cache.

    python3 bench/cache/bench.py [--targets 'kind(lambda_platform_image, //handlers/...)']

Every scenario builds TARGETS in a new copy of the workspace (so a new output base and Bazel
server), against moto's S3 on loopback:
    cold       no remote cache and no disk cache: every action runs
    populate   through an empty cache server: every action runs and is uploaded to S3
    warm-s3    through a new cache server with an empty disk tier: outputs come from S3
    warm-disk  through that server again: outputs come from its disk tier
Each scenario first runs `bazel build --nobuild` (Bazel server start, repository fetching,
analysis: the same with or without a cache), then the build proper. It prints both wall times,
the critical path, Bazel's spawn summary and the bytes moved.
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
    flags = e2e.cache_flags(workspace, url)
    before = e2e.cache_status(url)["totals"] if url else dict.fromkeys(COUNTERS, 0)
    try:
        e2e.say(f"{name}: bazel build of {len(targets)} targets")
        # Bazel server start, repository fetching and analysis: the same with or without a cache.
        setup = e2e.run_bazel(
            workspace,
            ["build", "--nobuild", *flags, *targets],
            workdir / f"{name}-setup.log",
        )
        run = e2e.run_bazel(
            workspace, ["build", *flags, *targets], workdir / f"{name}.log"
        )
        for step in (setup, run):
            if step.exit_code != 0:
                raise e2e.CheckFailed(
                    f"{name} build failed ({step.log}):\n{step.tail()}"
                )
        after = e2e.wait_for_uploads(url)["totals"] if url else before
    finally:
        e2e.expunge(workspace)
    critical_path = re.search(r"Critical Path: ([\d.]+)s", run.output)
    return {
        "scenario": name,
        "setup": setup.seconds,
        "build": run.seconds,
        "critical_path": float(critical_path.group(1))
        if critical_path
        else float("nan"),
        "executed": run.executed,
        "cache_hits": run.processes.get("remote cache hit", 0),
        **{counter: after[counter] - before[counter] for counter in COUNTERS},
    }


def human(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=e2e.DEFAULT_TARGETS,
        help="patterns or query expressions",
    )
    args = parser.parse_args(argv)
    description = " ".join(args.targets)
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    rows = []
    try:
        args.targets = e2e.resolve_targets(args.targets)
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

    print(f"\nS3 remote cache benchmark: bazel build {description}, fresh output bases")
    header = (
        f"{'scenario':<10} {'setup s':>7} {'build s':>7} {'crit. s':>7} {'executed':>8} "
        f"{'cache hits':>10} {'to Bazel':>10} {'from Bazel':>10} {'S3 down':>10} {'S3 up':>10}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['scenario']:<10} {row['setup']:>7.1f} {row['build']:>7.1f} "
            f"{row['critical_path']:>7.1f} {row['executed']:>8} {row['cache_hits']:>10} "
            f"{human(row['bytes_out']):>10} {human(row['bytes_in']):>10} "
            f"{human(row['s3_bytes_down']):>10} {human(row['s3_bytes_up']):>10}"
        )
    cold, warm = rows[0], rows[2]
    print(
        f"fresh output base, cold -> warm S3: setup + build {cold['setup'] + cold['build']:.1f}s "
        f"-> {warm['setup'] + warm['build']:.1f}s; build phase {cold['build']:.1f}s -> "
        f"{warm['build']:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
