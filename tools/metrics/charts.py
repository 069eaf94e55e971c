"""The report's four charts as matplotlib figures, from rows of the history (store.py).

Every chart has axis labels with units, a legend and a title that says what it shows.
"""

import datetime

import matplotlib

matplotlib.use("Agg")  # files only; no display

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

MIB = 2**20
KIND_COLORS = {"cold": "#d62728", "incremental": "#1f77b4", "no-op": "#2ca02c"}
CONFIGURATION_COLORS = {"arm64": "#1f77b4", "amd64": "#ff7f0e"}
PUSH_PARTS = (
    ("uploaded_bytes", "uploaded", "#d62728"),
    ("mounted_bytes", "mounted from another repository", "#1f77b4"),
    ("skipped_bytes", "already present (skipped)", "#bdbdbd"),
)
OWN_LAYER_COLOR = "#7f7f7f"


def _when(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < MIB:
        return f"{count / 1024:.1f} KiB"
    return f"{count / MIB:.1f} MiB"


def short_label(label: str) -> str:
    """//handlers/submit_to_openai:image -> submit_to_openai; //pkg/sub:other -> sub:other."""
    package, _, name = label.partition(":")
    directory = package.rsplit("/", 1)[-1]
    return directory if name in ("", "image", directory) else f"{directory}:{name}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _time_axis(axes) -> None:
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.set_xlabel("build start (UTC)")
    axes.grid(True, alpha=0.3)


def _figure() -> tuple[Figure, object]:
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100, layout="constrained")
    return figure, axes


def build_time(builds: list[dict]) -> Figure:
    """Wall time of each build over time, one series per kind; failed builds marked x."""
    figure, axes = _figure()
    for kind, color in KIND_COLORS.items():
        rows = [b for b in builds if b["kind"] == kind]
        if not rows:
            continue
        axes.plot(
            [_when(b["started_at"]) for b in rows],
            [b["wall_seconds"] for b in rows],
            marker="o",
            linestyle="-",
            linewidth=1,
            color=color,
            label=f"{kind} ({len(rows)})",
        )
    failed = [b for b in builds if not b["success"]]
    if failed:
        axes.plot(
            [_when(b["started_at"]) for b in failed],
            [b["wall_seconds"] for b in failed],
            marker="x",
            markersize=10,
            linestyle="none",
            color="black",
            label=f"failed ({len(failed)})",
        )
    axes.set_title("Build wall time by kind")
    axes.set_ylabel("wall time (s)")
    axes.set_ylim(bottom=0)
    _time_axis(axes)
    axes.legend(title="kind (builds)", loc="upper left")
    return figure


def cache_hit_rate(builds: list[dict]) -> Figure:
    """Cache hit rate of the builds that ran or fetched actions, by configuration."""
    figure, axes = _figure()
    for configuration, color in CONFIGURATION_COLORS.items():
        rows = [
            b
            for b in builds
            if b["configuration"] == configuration and b["cache_hit_rate"] is not None
        ]
        if rows:
            axes.plot(
                [_when(b["started_at"]) for b in rows],
                [b["cache_hit_rate"] for b in rows],
                marker="o",
                linewidth=1,
                color=color,
                label=configuration,
            )
    axes.set_title(
        "Cache hit rate (remote + disk cache hits / actions; no-op builds left out)"
    )
    axes.set_ylabel("cache hit rate (%)")
    axes.set_ylim(-5, 105)
    _time_axis(axes)
    axes.legend(title="configuration", loc="lower left")
    return figure


def image_layers(images: list[dict], architecture: str) -> Figure:
    """One stacked bar per image, base layer at the bottom; a layer shared by several images
    has the same colour in each bar, a layer only one image has is grey and hatched."""
    figure, axes = plt.subplots(figsize=(10, 5.5), dpi=100, layout="constrained")
    counts: dict[str, int] = {}
    for image in images:
        for layer in image["layers"]:
            counts[layer["digest"]] = counts.get(layer["digest"], 0) + 1
    palette = plt.get_cmap("tab10").colors
    colors: dict[str, tuple] = {}
    labelled = set()
    tallest = 0.0
    names = [short_label(image["label"]) for image in images]
    for x, image in enumerate(images):
        bottom = 0.0
        for layer in image["layers"]:
            height = layer["compressed_bytes"] / MIB
            shared = counts[layer["digest"]] > 1
            if shared:
                color = colors.setdefault(
                    layer["name"], palette[len(colors) % len(palette)]
                )
                label = f"{layer['name']} (shared)"
            else:
                color, label = OWN_LAYER_COLOR, "the image's own layer"
            axes.bar(
                x,
                height,
                bottom=bottom,
                color=color,
                edgecolor="white",
                linewidth=0.5,
                hatch=None if shared else "//",
                label=None if label in labelled else label,
            )
            labelled.add(label)
            bottom += height
        own = image["compressed_bytes"] - image["shared_bytes"]
        axes.annotate(
            f"{bottom:.0f} MiB\nown: {human_bytes(own)}",
            (x, bottom),
            ha="center",
            va="bottom",
            fontsize=8,
        )
        tallest = max(tallest, bottom)
    axes.set_xticks(range(len(images)), names, rotation=20, ha="right")
    axes.set_xlabel("image")
    axes.set_ylabel("compressed size (MiB)")
    axes.set_title(f"Image size by layer (linux/{architecture}, latest build)")
    axes.set_ylim(0, tallest * 1.15 or 1)
    axes.legend(
        title="layer (bottom first)", loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    axes.grid(True, axis="y", alpha=0.3)
    return figure


def push_bytes(pushes: list[dict]) -> Figure:
    """Bytes of each push: uploaded, mounted and skipped, stacked."""
    figure, axes = _figure()
    positions = range(len(pushes))
    bottom = [0.0] * len(pushes)
    for field, label, color in PUSH_PARTS:
        heights = [p[field] / MIB for p in pushes]
        axes.bar(positions, heights, bottom=bottom, color=color, label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set_xticks(
        positions,
        [
            f"{_when(p['pushed_at']):%m-%d %H:%M}\n{_shorten(p['registry'], 24)}"
            for p in pushes
        ],
        fontsize=8,
    )
    axes.set_xlabel("push (UTC time, registry)")
    axes.set_ylabel("image bytes (MiB)")
    axes.set_title("Push bytes: what each `bazel run //:push` uploaded")
    axes.set_ylim(0, max(bottom, default=0) * 1.3 or 1)
    axes.legend(loc="upper center", ncol=3)
    axes.grid(True, axis="y", alpha=0.3)
    return figure
