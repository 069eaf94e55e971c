"""What a push reports: the table, the references file for IaC tools, sizes and paths."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tools.push.pusher import Result
from tools.registry import client


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def reference(registry: client.Registry, result: Result) -> str:
    return (
        f"{registry.name}/{result.repository}@{result.image.digest}"
        if result.image
        else ""
    )


def print_table(
    registry: client.Registry, results: list[Result], dry_run: bool, out
) -> None:
    headers = [
        "IMAGE",
        "REFERENCE",
        "WOULD UPLOAD" if dry_run else "UPLOADED",
        "PRESENT",
        "MOUNTED",
        "TIME",
        "TAGS",
    ]
    rows = []
    for result in results:
        if result.error:
            rows.append(
                [
                    result.name,
                    f"FAILED ({result.repository})",
                    "",
                    "",
                    "",
                    f"{result.seconds:.1f}s",
                    "",
                ]
            )
            continue
        rows.append(
            [
                result.name,
                reference(registry, result),
                human_bytes(result.uploaded),
                human_bytes(result.skipped),
                human_bytes(result.mounted),
                f"{result.seconds:.1f}s",
                (",".join(result.tags) if result.tagged or dry_run else "not set")
                if result.tags
                else "-",
            ]
        )
    widths = [
        max(len(str(row[column])) for row in [headers, *rows])
        for column in range(len(headers))
    ]
    for row in [headers, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip(),
            file=out,
        )


def write_references(
    path: Path, registry: client.Registry, results: list[Result]
) -> None:
    images = {}
    for result in results:
        if result.error or not result.image:
            continue
        images[result.name] = {
            "digest": result.image.digest,
            "platform": result.image.platform,
            "reference": reference(registry, result),
            "registry": registry.name,
            "repository": result.repository,
            "tags": result.tags if result.tagged else [],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(
        json.dumps({"images": images}, indent=2, sort_keys=True) + "\n"
    )
    os.replace(temporary, path)


def shown_path(path: Path) -> Path:
    """`path` as bazel-bin/... when it is under the workspace's bazel-bin, which reads better."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if workspace:
        bazel_bin = Path(workspace, "bazel-bin")
        try:
            return Path("bazel-bin") / path.resolve().relative_to(bazel_bin.resolve())
        except (OSError, ValueError):
            pass
    return path


# Set by tools/bazel: where write_metrics puts this push's numbers.
METRICS_FILE_VARIABLE = "BUILD_METRICS_PUSH_FILE"


def write_metrics(registry_name: str, results: list[Result], seconds: float) -> None:
    """The push's numbers for the build history, where tools/bazel asks for them
    (tools/metrics/record.py reads the file when `bazel run` ends)."""
    path = os.environ.get(METRICS_FILE_VARIABLE)
    if not path:
        return
    images = [
        {
            "name": r.name,
            "repository": r.repository,
            "uploaded": r.uploaded,
            "mounted": r.mounted,
            "skipped": r.skipped,
            "seconds": r.seconds,
            "error": r.error,
        }
        for r in results
    ]
    record = {
        "pushed_at": time.time(),
        "registry": registry_name,
        "seconds": seconds,
        "images": images,
    }
    try:
        Path(path).write_text(json.dumps(record) + "\n")
    except OSError as error:  # the push itself succeeded; only its metrics are lost
        print(
            f"note: push metrics not recorded: {path}: {error.strerror}",
            file=sys.stderr,
        )
