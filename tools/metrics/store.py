"""The build history: one SQLite file with a row per Bazel command, its images' layers and the
pushes, at `${XDG_CACHE_HOME:-~/.cache}/receipt-lambdas/metrics/history.sqlite3`.

The schema version is SQLite's user_version; a file from a newer version is refused rather than
misread. Standard library only (the launcher records on the host's python3).
"""

import os
import sqlite3
from pathlib import Path
from typing import NamedTuple

from tools.metrics import images

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    invocation_id TEXT NOT NULL UNIQUE,
    started_at REAL NOT NULL,            -- seconds since the epoch
    git_commit TEXT,
    command TEXT NOT NULL,               -- build, test, run, coverage
    patterns TEXT NOT NULL,              -- space-separated target patterns
    configuration TEXT NOT NULL,         -- arm64 or amd64
    kind TEXT NOT NULL,                  -- cold, incremental or no-op (bep.BuildSummary.kind)
    wall_seconds REAL NOT NULL,
    critical_path_seconds REAL,
    actions INTEGER NOT NULL,            -- cached + run; Bazel-internal actions not counted
    remote_cache_hits INTEGER NOT NULL,
    disk_cache_hits INTEGER NOT NULL,
    local_actions INTEGER NOT NULL,
    remote_actions INTEGER NOT NULL,
    cache_hit_rate REAL,                 -- percent; NULL when no action ran or was cached
    tests_passed INTEGER NOT NULL,
    tests_failed INTEGER NOT NULL,
    exit_code TEXT NOT NULL,
    success INTEGER NOT NULL
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    build_id INTEGER NOT NULL REFERENCES builds(id),
    label TEXT NOT NULL,
    architecture TEXT NOT NULL,
    digest TEXT NOT NULL,
    layer_count INTEGER NOT NULL,
    compressed_bytes INTEGER NOT NULL,
    uncompressed_bytes INTEGER,
    shared_bytes INTEGER NOT NULL        -- compressed bytes in layers other images also have
);
CREATE TABLE layers (
    image_id INTEGER NOT NULL REFERENCES images(id),
    position INTEGER NOT NULL,           -- 0 is the bottom (base) layer
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    compressed_bytes INTEGER NOT NULL,
    uncompressed_bytes INTEGER,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE pushes (
    id INTEGER PRIMARY KEY,
    build_id INTEGER REFERENCES builds(id),  -- the `bazel run` that pushed, when recorded
    pushed_at REAL NOT NULL,
    registry TEXT NOT NULL,
    seconds REAL NOT NULL,
    success INTEGER NOT NULL
);
CREATE TABLE pushed_images (
    push_id INTEGER NOT NULL REFERENCES pushes(id),
    name TEXT NOT NULL,
    repository TEXT NOT NULL,
    uploaded_bytes INTEGER NOT NULL,
    mounted_bytes INTEGER NOT NULL,
    skipped_bytes INTEGER NOT NULL,      -- already in the repository
    seconds REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE published (                 -- rows already sent to a CloudWatch namespace
    namespace TEXT NOT NULL,
    source TEXT NOT NULL,                -- builds or pushes
    row_id INTEGER NOT NULL,
    PRIMARY KEY (namespace, source, row_id)
);
"""


class StoreError(Exception):
    """The history file cannot be used as it is."""


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base, "receipt-lambdas", "metrics")


def default_path() -> Path:
    return default_dir() / "history.sqlite3"


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """The history at `path`, created with the current schema when `create` and missing."""
    if not create and not path.exists():
        raise FileNotFoundError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    # A row is added after every build: with a write-ahead log and synchronous=NORMAL a commit
    # does not wait for the disk (an fsync took up to 0.14 s on a busy machine); a crash can lose
    # the last rows, never the file's consistency.
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        with connection:
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif version > SCHEMA_VERSION:
        connection.close()
        raise StoreError(
            f"{path} has schema version {version}, newer than this checkout's "
            f"{SCHEMA_VERSION}; update the checkout, or move the file away to start a new history"
        )
    return connection


def add_build(
    connection: sqlite3.Connection,
    summary,
    git_commit: str | None,
    built: list[images.Image],
) -> int:
    """Stores a bep.BuildSummary and the images it built in one transaction; returns its id.
    A second call for the same invocation changes nothing and returns the first row's id."""
    with connection:
        existing = connection.execute(
            "SELECT id FROM builds WHERE invocation_id = ?", (summary.invocation_id,)
        ).fetchone()
        if existing:
            return existing[0]
        build_id = connection.execute(
            """INSERT INTO builds (invocation_id, started_at, git_commit, command, patterns,
                configuration, kind, wall_seconds, critical_path_seconds, actions,
                remote_cache_hits, disk_cache_hits, local_actions, remote_actions,
                cache_hit_rate, tests_passed, tests_failed, exit_code, success)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                summary.invocation_id,
                summary.started_at,
                git_commit,
                summary.command,
                " ".join(summary.patterns),
                summary.configuration,
                summary.kind,
                summary.wall_seconds,
                summary.critical_path_seconds,
                summary.actions,
                summary.remote_cache_hits,
                summary.disk_cache_hits,
                summary.local_actions,
                summary.remote_actions,
                summary.cache_hit_rate,
                summary.tests_passed,
                summary.tests_failed,
                summary.exit_code,
                int(summary.success),
            ),
        ).lastrowid
        for image in built:
            others = [other for other in built if other is not image]
            image_id = connection.execute(
                """INSERT INTO images (build_id, label, architecture, digest, layer_count,
                    compressed_bytes, uncompressed_bytes, shared_bytes)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    build_id,
                    image.label,
                    image.architecture,
                    image.digest,
                    len(image.layers),
                    image.compressed_bytes,
                    image.uncompressed_bytes,
                    images.shared_bytes(image, others),
                ),
            ).lastrowid
            connection.executemany(
                """INSERT INTO layers (image_id, position, digest, name, compressed_bytes,
                    uncompressed_bytes) VALUES (?, ?, ?, ?, ?, ?)""",
                [
                    (
                        image_id,
                        position,
                        layer.digest,
                        layer.name,
                        layer.compressed_bytes,
                        layer.uncompressed_bytes,
                    )
                    for position, layer in enumerate(image.layers)
                ],
            )
    return build_id


class PushedImage(NamedTuple):
    name: str
    repository: str
    uploaded_bytes: int
    mounted_bytes: int
    skipped_bytes: int
    seconds: float
    error: str = ""


def add_push(
    connection: sqlite3.Connection,
    pushed_at: float,
    registry: str,
    seconds: float,
    images: list[PushedImage],
    build_id: int | None = None,
) -> int:
    with connection:
        push_id = connection.execute(
            "INSERT INTO pushes (build_id, pushed_at, registry, seconds, success) VALUES (?, ?, ?, ?, ?)",
            (
                build_id,
                pushed_at,
                registry,
                seconds,
                int(not any(i.error for i in images)),
            ),
        ).lastrowid
        connection.executemany(
            """INSERT INTO pushed_images (push_id, name, repository, uploaded_bytes,
                mounted_bytes, skipped_bytes, seconds, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                (
                    push_id,
                    i.name,
                    i.repository,
                    i.uploaded_bytes,
                    i.mounted_bytes,
                    i.skipped_bytes,
                    i.seconds,
                    i.error,
                )
                for i in images
            ],
        )
    return push_id


def recent_builds(connection: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """The last `limit` builds, oldest first."""
    rows = connection.execute(
        "SELECT * FROM builds ORDER BY started_at DESC, id DESC LIMIT ?", (limit,)
    ).fetchall()
    return rows[::-1]


def latest_images(
    connection: sqlite3.Connection, architecture: str, prefix: str = "//"
) -> list[dict]:
    """The images whose label starts with `prefix` of the latest build that produced such
    images for `architecture`, each with its layers (bottom first)."""
    row = connection.execute(
        """SELECT build_id FROM images JOIN builds ON builds.id = images.build_id
           WHERE architecture = ? AND substr(label, 1, length(?)) = ?
           ORDER BY builds.started_at DESC, builds.id DESC LIMIT 1""",
        (architecture, prefix, prefix),
    ).fetchone()
    if row is None:
        return []
    found = []
    for image in connection.execute(
        """SELECT * FROM images WHERE build_id = ? AND architecture = ?
           AND substr(label, 1, length(?)) = ? ORDER BY label""",
        (row[0], architecture, prefix, prefix),
    ):
        layers = connection.execute(
            "SELECT * FROM layers WHERE image_id = ? ORDER BY position", (image["id"],)
        ).fetchall()
        found.append({**dict(image), "layers": [dict(layer) for layer in layers]})
    return found


def architectures(connection: sqlite3.Connection, prefix: str = "//") -> list[str]:
    """The architectures of the images whose label starts with `prefix`."""
    return [
        row[0]
        for row in connection.execute(
            """SELECT DISTINCT architecture FROM images
               WHERE substr(label, 1, length(?)) = ? ORDER BY architecture""",
            (prefix, prefix),
        )
    ]


def pushes(connection: sqlite3.Connection) -> list[sqlite3.Row]:
    """One row per push with its byte totals, oldest first."""
    return connection.execute(
        """SELECT pushes.*, COUNT(pushed_images.name) AS images,
                  COALESCE(SUM(uploaded_bytes), 0) AS uploaded_bytes,
                  COALESCE(SUM(mounted_bytes), 0) AS mounted_bytes,
                  COALESCE(SUM(skipped_bytes), 0) AS skipped_bytes
           FROM pushes LEFT JOIN pushed_images ON pushed_images.push_id = pushes.id
           GROUP BY pushes.id ORDER BY pushed_at, pushes.id"""
    ).fetchall()
