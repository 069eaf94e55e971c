#!/usr/bin/env python3
"""Before/after of the edit loop: two commits' no-op and edit builds, measured alternately.

    bench/images/compare.py BEFORE [AFTER]          # AFTER defaults to HEAD
    bench/images/compare.py 2527b59 --rounds 10 --bazel-flag=--config=amd64

This machine's speed drifts by 30% within minutes, so two bench.py runs taken at different times
can not show a 50 ms change. This clones both commits into scratch work trees (each gets its own
Bazel server), warms both servers with 25 no-op builds, then takes rounds of: a no-op build in
each, then an edit of handlers/list_pending_batches/handler.py and its build in each. Each round
measures both commits within a second of each other. Prints the medians. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import EDITED, REPO, remove_output_base, remove_tree, timed_build

WARM_UP_BUILDS = 25


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="a commit")
    parser.add_argument("after", nargs="?", default="HEAD", help="a commit (HEAD)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--bazel-flag", action="append", default=[], help="e.g. --config=amd64"
    )
    parser.add_argument(
        "--tmpdir",
        default="/tmp",
        help="under /tmp or your home directory (the build environment sees both)",
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-compare-", dir=args.tmpdir))
    trees = {"before": scratch / "before", "after": scratch / "after"}
    try:
        for name, revision in (("before", args.before), ("after", args.after)):
            subprocess.run(
                ["git", "clone", "--quiet", str(REPO), str(trees[name])], check=True
            )
            subprocess.run(
                ["git", "-C", str(trees[name]), "checkout", "--quiet", revision],
                check=True,
            )
        original = {name: (tree / EDITED).read_text() for name, tree in trees.items()}
        for tree in trees.values():
            for _ in range(WARM_UP_BUILDS):
                timed_build(tree, args.bazel_flag)
        times: dict[tuple[str, str], list[float]] = {
            (name, step): [] for name in trees for step in ("no-op", "edit")
        }
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                times[name, "no-op"].append(timed_build(tree, args.bazel_flag)[0])
            for name, tree in trees.items():
                (tree / EDITED).write_text(original[name] + f"# compare {round_}\n")
                times[name, "edit"].append(timed_build(tree, args.bazel_flag)[0])
        print(
            f"{args.rounds} rounds, flags {' '.join(args.bazel_flag) or '(none)'}\n\n"
            f"| step | before ({args.before}) | after ({args.after}) |\n| --- | ---: | ---: |"
        )
        for step in ("no-op", "edit"):
            cells = [
                f"{statistics.median(times[name, step]):.2f} s "
                f"({min(times[name, step]):.2f}-{max(times[name, step]):.2f})"
                for name in trees
            ]
            print(f"| {step} | {cells[0]} | {cells[1]} |")
    finally:
        for tree in trees.values():
            if (tree / "tools" / "bazel").exists():
                remove_output_base(tree)
        remove_tree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
