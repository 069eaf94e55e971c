"""The report: its table and charts show the numbers the history holds."""

import datetime
from pathlib import Path

import pytest

from tools.metrics import bep, images, report, store

TESTDATA = Path(__file__).parent / "testdata"
FIXTURES = (
    "cold_build",
    "noop_build",
    "test",
    "incremental_build",
    "failed_build",
    "amd64_build",
)


def fake_image(label: str, layers: list[tuple[str, int]]) -> images.Image:
    return images.Image(
        label=label,
        digest=f"sha256:{label}",
        architecture="arm64",
        layers=[
            images.Layer(f"sha256:{name}", size, size * 3, name)
            for name, size in layers
        ],
    )


@pytest.fixture
def history(tmp_path) -> Path:
    path = tmp_path / "history.sqlite3"
    connection = store.connect(path)
    base = [("//base:rootfs_arm64", 28 << 20), ("//base:site_packages_ml", 53 << 20)]
    built = [
        fake_image(
            f"//handlers/{name}:image",
            base + [(f"//handlers/{name}:files", 4096 * (i + 1))],
        )
        for i, name in enumerate(("submit", "poll", "compact"))
    ]
    for index, name in enumerate(FIXTURES):
        summary = bep.parse(TESTDATA / f"{name}.bep.json")
        store.add_build(
            connection, summary, f"{index:040x}", built if name == "cold_build" else []
        )
    for hour, uploaded in ((1, 300 << 20), (2, 4 << 20)):
        store.add_push(
            connection,
            pushed_at=1796150000.0 + 3600 * hour,
            registry="127.0.0.1:5055",
            seconds=12.0,
            images=[
                store.PushedImage(
                    "submit", "receipts/submit", uploaded, 7 << 20, 80 << 20, 12.0
                )
            ],
        )
    connection.close()
    return path


def run_report(history: Path, output: Path, capsys, *args) -> str:
    assert report.run(["--history", str(history), "--output", str(output), *args]) == 0
    return capsys.readouterr().out


def test_table_rows_are_the_stored_builds(history, tmp_path, capsys):
    out = run_report(history, tmp_path / "report", capsys)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["started", "(UTC)", "commit"]
    connection = store.connect(history)
    rows = store.recent_builds(connection, 20)
    assert len(rows) == len(FIXTURES)
    table = lines[1 : 1 + len(rows)]
    for line, row in zip(table, rows, strict=True):
        cells = line.split()
        when = datetime.datetime.fromtimestamp(row["started_at"], datetime.UTC)
        assert cells[0:2] == when.strftime("%Y-%m-%d %H:%M:%S").split()
        assert cells[2] == row["git_commit"][:8]
        assert cells[3] == row["command"]
        assert f"{row['wall_seconds']:.1f}" in cells
        assert str(row["actions"]) in cells
        rate = row["cache_hit_rate"]
        assert cells[-3] == ("-" if rate is None else f"{rate:.0f}")
        assert cells[-1] == ("ok" if row["success"] else row["exit_code"])
        assert row["kind"] in cells and row["configuration"] in cells


def test_html_and_pngs_are_written(history, tmp_path, capsys):
    output = tmp_path / "report"
    out = run_report(history, output, capsys)
    page = output / "report.html"
    assert f"wrote {page}" in out
    html = page.read_text()
    names = [
        "build-time.png",
        "cache-hit-rate.png",
        "image-layers-arm64.png",
        "push-bytes.png",
    ]
    assert html.count("<svg") == len(names)
    assert "<img" not in html and "src=" not in html, (
        "self-contained: no external files"
    )
    for name in names:
        png = (output / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
        assert f"wrote {output / name}" in out


def test_chart_data_is_the_stored_data(history):
    connection = store.connect(history)
    builds = [dict(b) for b in store.recent_builds(connection, 100)]
    figures = report.figures(connection)

    (axes,) = figures["build-time.png"].axes
    by_label = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    for kind in ("cold", "incremental", "no-op"):
        walls = [b["wall_seconds"] for b in builds if b["kind"] == kind]
        assert by_label[f"{kind} ({len(walls)})"] == walls
    failed = [b["wall_seconds"] for b in builds if not b["success"]]
    assert by_label[f"failed ({len(failed)})"] == failed
    assert axes.get_ylabel() == "wall time (s)"

    (axes,) = figures["cache-hit-rate.png"].axes
    rates = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    for configuration in ("arm64", "amd64"):
        assert rates[configuration] == [
            b["cache_hit_rate"]
            for b in builds
            if b["configuration"] == configuration and b["cache_hit_rate"] is not None
        ]

    (axes,) = figures["image-layers-arm64.png"].axes
    stored = store.latest_images(connection, "arm64")
    heights = [patch.get_height() for patch in axes.patches]
    expected = [
        layer["compressed_bytes"] / 2**20 for i in stored for layer in i["layers"]
    ]
    assert sorted(heights) == pytest.approx(sorted(expected))
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == [
        "//base:rootfs_arm64 (shared)",
        "//base:site_packages_ml (shared)",
        "the image's own layer",
    ]

    (axes,) = figures["push-bytes.png"].axes
    pushes = store.pushes(connection)
    uploaded = [p.get_height() for p in axes.containers[0]]
    assert uploaded == [p["uploaded_bytes"] / 2**20 for p in pushes]


def test_no_history_says_so(tmp_path, capsys):
    out = run_report(tmp_path / "missing.sqlite3", tmp_path / "report", capsys)
    assert out.startswith("No build history yet:")
    assert not (tmp_path / "report").exists()
    assert not (tmp_path / "missing.sqlite3").exists()


def test_empty_history_says_so(tmp_path, capsys):
    store.connect(tmp_path / "history.sqlite3").close()
    out = run_report(tmp_path / "history.sqlite3", tmp_path / "report", capsys)
    assert out.startswith("No builds recorded yet")
