#!/usr/bin/env python3
"""Remote execution on the local cluster: the six handler images (arm64) built cold with 1 and 2
buildbox workers, then a no-op build. Prints a table for README.md ("Remote execution" bench).

    bench/remote/bench.py [--runs N]

"Cold" is a fresh output base, no disk cache and --noremote_accept_cached, so every action runs
on a worker (its inputs uploaded to BuildGrid's CAS unless already there from an earlier run).
Each cluster is started for its run and stopped afterwards; a cluster that already runs is an
error (stop it with tools/bazel remote down).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tools" / "buildenv"), str(REPO / "tools" / "cache")]

import e2e  # tools/cache/e2e.py: run_bazel and Bazel's process summary
import launcher
from cluster import host as cluster

TARGETS = ["//handlers/..."]
FLAGS = [
    "--config=remote",
    "--disk_cache=",
    "--noremote_accept_cached",
    "--symlink_prefix=/",
    "--color=no",
    "--curses=no",
]


def tools_bazel(*args: str) -> None:
    subprocess.run([str(REPO / "tools" / "bazel"), *args], cwd=REPO, check=True)


def build(output_base: Path, log: Path) -> e2e.BazelRun:
    run = e2e.run_bazel(
        REPO, [f"--output_base={output_base}", "build", *FLAGS, *TARGETS], log
    )
    if run.exit_code != 0:
        sys.exit(f"bench: the build failed ({log}):\n{run.tail()}")
    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="cold builds per worker count"
    )
    args = parser.parse_args()
    if cluster.running_state(cluster.state_dir(launcher.cache_root())):
        sys.exit(
            "bench: a cluster already runs; stop it first (tools/bazel remote down)"
        )
    scratch = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    rows = []
    try:
        for workers in (1, 2):
            tools_bazel("remote", "up", f"--workers={workers}")
            try:
                times, executed = [], 0
                for index in range(args.runs):
                    base = scratch / f"base-{workers}-{index}"
                    run = build(base, scratch / f"cold-{workers}-{index}.log")
                    times.append(run.seconds)
                    executed = run.processes.get("remote", 0)
                    if workers == 2 and index == args.runs - 1:
                        noop = build(base, scratch / "noop.log")
                        noop_row = (
                            "no-op (same output base, 2 workers)",
                            noop.seconds,
                            0,
                        )
                    e2e.run_bazel(
                        REPO,
                        [f"--output_base={base}", "shutdown"],
                        scratch / "shutdown.log",
                    )
                rows.append(
                    (
                        f"cold, {workers} worker{'s' if workers > 1 else ''}",
                        statistics.median(times),
                        executed,
                    )
                )
            finally:
                tools_bazel("remote", "down")
        rows.append(noop_row)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n| six images (arm64), --config=remote | wall time (tools/bazel, median of {args.runs}) | actions run remotely |"
    )
    print("| --- | ---: | ---: |")
    for name, seconds, executed in rows:
        print(f"| {name} | {seconds:.1f} s | {executed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
