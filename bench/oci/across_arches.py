"""The table of bench/oci/README.md: compress.py's results on several CPUs, side by side.

    python3 bench/oci/across_arches.py x86_64.json aarch64.json
    python3 bench/oci/across_arches.py "x86_64 (SSE2 only, qemu)=qemu64.json" ...

Each JSON file is what `compress.py --json` wrote on one machine (or under qemu), for the same
input; LABEL=FILE names its column, else the machine does. An encoder is portable when its
output has the same sha256 in every file.
"""

import json
import sys


def main(arguments):
    runs, labels = [], []
    for argument in arguments:
        label, _, path = argument.rpartition("=")
        with open(path) as handle:
            runs.append(json.load(handle))
        labels.append(label or runs[-1]["machine"])
    inputs = {run["input_sha256"] for run in runs}
    if len(inputs) != 1:
        raise SystemExit(f"the runs compressed different inputs: {sorted(inputs)}")
    print(f"input: {runs[0]['input_bytes'] / 1e6:.1f} MB")
    for label, run in zip(labels, runs):
        print(f"{label}: {run['versions']}")
    print()
    print(
        "| encoder | "
        + " | ".join(f"{label} MB/s" for label in labels)
        + " | output MB | same bytes on all |"
    )
    print("| --- | " + " | ".join("---:" for _ in labels) + " | ---: | --- |")
    by_machine = [{row["encoder"]: row for row in run["rows"]} for run in runs]
    for encoder in by_machine[0]:
        rows = [table.get(encoder) for table in by_machine]
        if any(row is None or "missing" in row for row in rows):
            continue
        speeds = " | ".join(f"{row['mb_per_s']:.1f}" for row in rows)
        sizes = sorted({f"{row['output_bytes'] / 1e6:.2f}" for row in rows})
        same = "yes" if len({row["sha256"] for row in rows}) == 1 else "**no**"
        print(f"| {encoder} | {speeds} | {' / '.join(sizes)} | {same} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
