"""`tools/bazel run //tools/metrics:report`: prints a table of the last builds and writes one
self-contained HTML file (charts as inline SVG) plus a PNG of each chart.

`--cloudwatch NAMESPACE` also publishes the history to CloudWatch (cloudwatch.py).
"""

import argparse
import datetime
import html
import io
import sqlite3
import sys
from pathlib import Path

from tools.metrics import store

CHART_FILES = {
    "build_time": "build-time.png",
    "cache_hit_rate": "cache-hit-rate.png",
    "image_layers": "image-layers-{architecture}.png",
    "push_bytes": "push-bytes.png",
}
TABLE_COLUMNS = (
    "started (UTC)",
    "commit",
    "command",
    "targets",
    "config",
    "kind",
    "wall s",
    "crit s",
    "actions",
    "cached",
    "run",
    "hit %",
    "tests",
    "result",
)
CHART_PUSHES = 30


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tools/bazel run //tools/metrics:report --",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=store.default_path(),
        help="the history file (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=store.default_dir() / "report",
        help="directory for report.html and the PNGs (default: %(default)s)",
    )
    parser.add_argument(
        "--last", type=int, default=20, help="builds in the table (default: 20)"
    )
    parser.add_argument(
        "--images",
        metavar="PREFIX",
        default="//handlers/",
        help="the image chart shows images whose label starts with this (default: %(default)s)",
    )
    parser.add_argument(
        "--cloudwatch",
        metavar="NAMESPACE",
        help="also publish the builds, images and pushes not yet sent to this CloudWatch "
        "namespace (AWS credentials and region from the standard chain)",
    )
    return parser.parse_args(argv)


def table_rows(builds: list[sqlite3.Row]) -> list[tuple[str, ...]]:
    """One row of TABLE_COLUMNS text per build."""
    rows = []
    for b in builds:
        when = datetime.datetime.fromtimestamp(b["started_at"], datetime.UTC)
        tests = (
            f"{b['tests_passed']}/{b['tests_passed'] + b['tests_failed']}"
            if b["tests_passed"] + b["tests_failed"]
            else "-"
        )
        rows.append(
            (
                f"{when:%Y-%m-%d %H:%M:%S}",
                (b["git_commit"] or "-")[:8],
                b["command"],
                _shorten(b["patterns"], 32),
                b["configuration"],
                b["kind"],
                f"{b['wall_seconds']:.1f}",
                "-"
                if b["critical_path_seconds"] is None
                else f"{b['critical_path_seconds']:.1f}",
                str(b["actions"]),
                str(b["remote_cache_hits"] + b["disk_cache_hits"]),
                str(b["local_actions"] + b["remote_actions"]),
                "-" if b["cache_hit_rate"] is None else f"{b['cache_hit_rate']:.0f}",
                tests,
                "ok" if b["success"] else b["exit_code"],
            )
        )
    return rows


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [
        max(len(row[i]) for row in [TABLE_COLUMNS, *rows])
        for i in range(len(TABLE_COLUMNS))
    ]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [TABLE_COLUMNS, *rows]
    ]
    return "\n".join(lines)


def figures(
    connection: sqlite3.Connection, image_prefix: str = "//handlers/"
) -> dict[str, object]:
    """The report's charts by file name; a chart without data is left out."""
    from tools.metrics import (
        charts,
    )  # matplotlib loads only when there is something to draw

    builds = [dict(b) for b in store.recent_builds(connection, 10_000)]
    result = {}
    if builds:
        result[CHART_FILES["build_time"]] = charts.build_time(builds)
        if any(b["cache_hit_rate"] is not None for b in builds):
            result[CHART_FILES["cache_hit_rate"]] = charts.cache_hit_rate(builds)
    for architecture in store.architectures(connection, image_prefix):
        images = store.latest_images(connection, architecture, image_prefix)
        name = CHART_FILES["image_layers"].format(architecture=architecture)
        result[name] = charts.image_layers(images, architecture)
    pushes = [dict(p) for p in store.pushes(connection)][-CHART_PUSHES:]
    if pushes:
        result[CHART_FILES["push_bytes"]] = charts.push_bytes(pushes)
    return result


def svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def render_html(history: Path, rows, charts_svg: dict[str, str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    sections = "".join(
        f"<section><h2>{html.escape(name.removesuffix('.png').replace('-', ' ').capitalize())}</h2>{image}</section>"
        for name, image in charts_svg.items()
    )
    generated = datetime.datetime.now(datetime.UTC)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Build metrics</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }}
th {{ background: #f0f0f0; }}
section svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>Build metrics</h1>
<p>From {html.escape(str(history))}, generated {generated:%Y-%m-%d %H:%M} UTC.
Kinds: <b>cold</b> = most actions had never run in this output base (fresh clone, <code>bazel
clean</code>, new configuration); <b>no-op</b> = no action ran or came from a cache;
<b>incremental</b> = the rest. Cache hit rate = (remote + disk cache hits) / actions, Bazel's
internal actions not counted.</p>
<h2>Last {len(rows)} builds</h2>
<table><tr>{head}</tr>{body}</table>
{sections}
</body></html>
"""


def write_report(
    connection, history: Path, output: Path, last: int, image_prefix: str
) -> list[Path]:
    """Writes report.html and one PNG per chart into `output`; returns their paths."""
    rows = table_rows(store.recent_builds(connection, last))
    output.mkdir(parents=True, exist_ok=True)
    written = []
    charts_svg = {}
    for name, figure in figures(connection, image_prefix).items():
        figure.savefig(output / name)
        written.append(output / name)
        charts_svg[name] = svg(figure)
    page = output / "report.html"
    page.write_text(render_html(history, rows, charts_svg), encoding="utf-8")
    return [page, *written]


def run(argv: list[str], out=None) -> int:
    out = out or sys.stdout
    args = parse_args(argv)
    if not args.history.exists():
        print(
            f"No build history yet: {args.history} does not exist. Builds and tests through "
            "tools/bazel record it (unless BUILD_METRICS=0).",
            file=out,
        )
        return 0
    connection = store.connect(args.history, create=False)
    try:
        builds = store.recent_builds(connection, args.last)
        if not builds:
            print(f"No builds recorded yet in {args.history}.", file=out)
            return 0
        print(format_table(table_rows(builds)), file=out)
        written = write_report(
            connection, args.history, args.output, args.last, args.images
        )
        for path in written:
            print(f"wrote {path}", file=out)
        if args.cloudwatch:
            from tools.metrics import cloudwatch

            sent = cloudwatch.publish(connection, args.cloudwatch)
            print(sent.describe(args.cloudwatch), file=out)
    finally:
        connection.close()
    return 0


def main() -> int:
    try:
        return run(sys.argv[1:])
    except store.StoreError as error:
        print(f"report: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
