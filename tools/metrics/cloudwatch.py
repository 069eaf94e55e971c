"""Publishes the history to CloudWatch (`report --cloudwatch NAMESPACE`): every build, its images
and every push not yet sent to that namespace, with the time it happened.

Metrics (dimensions):
- per build (Target = "<command> <patterns>", Configuration = arm64|amd64): Builds (Count, 1 per
  build: build frequency), BuildFailures (Count, 0 or 1: failure rate = Sum/Sum of Builds),
  BuildTime and CriticalPathTime (Seconds), CacheHitRate (Percent), ActionsRun and
  ActionsCached (Count), TestsFailed (Count, test commands);
- per image a build made (Image = label, Configuration): ImageSize and ImageSharedBytes (Bytes),
  and per build that made images (Configuration): ImageStorage (Bytes, distinct layers, what a
  registry stores);
- per push (Registry): PushUploadedBytes, PushMountedBytes, PushSkippedBytes (Bytes), PushTime
  (Seconds), PushFailures (Count).
"""

import dataclasses
import datetime
import sqlite3

from tools.metrics import store

# CloudWatch refuses data points older than two weeks.
MAX_AGE = datetime.timedelta(days=14)
# Data points per PutMetricData call (the API's long-standing limit; newer accounts allow more).
BATCH = 20
DIMENSION_VALUE_LIMIT = 255


@dataclasses.dataclass
class Published:
    builds: int = 0
    pushes: int = 0
    data_points: int = 0
    too_old: int = 0

    def describe(self, namespace: str) -> str:
        text = (
            f"CloudWatch {namespace}: published {self.builds} builds and {self.pushes} pushes "
            f"({self.data_points} data points)"
        )
        if self.too_old:
            text += f"; {self.too_old} older than 14 days left out (CloudWatch refuses them)"
        return text


def _dimensions(**values: str) -> list[dict]:
    return [
        {"Name": name, "Value": (value or "-")[:DIMENSION_VALUE_LIMIT]}
        for name, value in values.items()
    ]


def _datum(name, value, unit, when, dimensions) -> dict:
    return {
        "MetricName": name,
        "Value": float(value),
        "Unit": unit,
        "Timestamp": when,
        "Dimensions": dimensions,
    }


def build_data(connection: sqlite3.Connection, build: sqlite3.Row) -> list[dict]:
    when = datetime.datetime.fromtimestamp(build["started_at"], datetime.UTC)
    target = f"{build['command']} {build['patterns']}".strip()
    dimensions = _dimensions(Target=target, Configuration=build["configuration"])
    data = [
        _datum("Builds", 1, "Count", when, dimensions),
        _datum(
            "BuildFailures", 0 if build["success"] else 1, "Count", when, dimensions
        ),
        _datum("BuildTime", build["wall_seconds"], "Seconds", when, dimensions),
        _datum(
            "ActionsRun",
            build["local_actions"] + build["remote_actions"],
            "Count",
            when,
            dimensions,
        ),
        _datum(
            "ActionsCached",
            build["remote_cache_hits"] + build["disk_cache_hits"],
            "Count",
            when,
            dimensions,
        ),
    ]
    if build["critical_path_seconds"] is not None:
        data.append(
            _datum(
                "CriticalPathTime",
                build["critical_path_seconds"],
                "Seconds",
                when,
                dimensions,
            )
        )
    if build["cache_hit_rate"] is not None:
        data.append(
            _datum("CacheHitRate", build["cache_hit_rate"], "Percent", when, dimensions)
        )
    if build["command"] in ("test", "coverage"):
        data.append(
            _datum("TestsFailed", build["tests_failed"], "Count", when, dimensions)
        )
    images = connection.execute(
        "SELECT * FROM images WHERE build_id = ? ORDER BY label", (build["id"],)
    ).fetchall()
    for image in images:
        image_dimensions = _dimensions(
            Image=image["label"], Configuration=image["architecture"]
        )
        data.append(
            _datum(
                "ImageSize", image["compressed_bytes"], "Bytes", when, image_dimensions
            )
        )
        data.append(
            _datum(
                "ImageSharedBytes",
                image["shared_bytes"],
                "Bytes",
                when,
                image_dimensions,
            )
        )
    for architecture, stored in connection.execute(
        """SELECT architecture, SUM(size) FROM (
               SELECT DISTINCT images.architecture, layers.digest,
                      layers.compressed_bytes AS size
               FROM layers JOIN images ON images.id = layers.image_id
               WHERE images.build_id = ?)
           GROUP BY architecture""",
        (build["id"],),
    ):
        data.append(
            _datum(
                "ImageStorage",
                stored,
                "Bytes",
                when,
                _dimensions(Configuration=architecture),
            )
        )
    return data


def push_data(push: sqlite3.Row) -> list[dict]:
    when = datetime.datetime.fromtimestamp(push["pushed_at"], datetime.UTC)
    dimensions = _dimensions(Registry=push["registry"])
    return [
        _datum("PushUploadedBytes", push["uploaded_bytes"], "Bytes", when, dimensions),
        _datum("PushMountedBytes", push["mounted_bytes"], "Bytes", when, dimensions),
        _datum("PushSkippedBytes", push["skipped_bytes"], "Bytes", when, dimensions),
        _datum("PushTime", push["seconds"], "Seconds", when, dimensions),
        _datum("PushFailures", 0 if push["success"] else 1, "Count", when, dimensions),
    ]


def publish(
    connection: sqlite3.Connection,
    namespace: str,
    client=None,
    now: datetime.datetime | None = None,
) -> Published:
    """Sends what `namespace` has not had yet; each row is marked once its data is sent."""
    if client is None:
        import boto3

        client = boto3.session.Session().client("cloudwatch")
    now = now or datetime.datetime.now(datetime.UTC)
    oldest = (now - MAX_AGE).timestamp()
    sent = {
        (row["source"], row["row_id"])
        for row in connection.execute(
            "SELECT source, row_id FROM published WHERE namespace = ?", (namespace,)
        )
    }
    result = Published()
    rows = [
        ("builds", b["id"], b["started_at"], lambda b=b: build_data(connection, b))
        for b in connection.execute("SELECT * FROM builds ORDER BY started_at")
    ] + [
        ("pushes", p["id"], p["pushed_at"], lambda p=p: push_data(p))
        for p in store.pushes(connection)
    ]
    for source, row_id, at, data in rows:
        if (source, row_id) in sent:
            continue
        if at < oldest:
            result.too_old += 1
            continue
        points = data()
        for start in range(0, len(points), BATCH):
            client.put_metric_data(
                Namespace=namespace, MetricData=points[start : start + BATCH]
            )
        with connection:
            connection.execute(
                "INSERT INTO published (namespace, source, row_id) VALUES (?, ?, ?)",
                (namespace, source, row_id),
            )
        result.data_points += len(points)
        if source == "builds":
            result.builds += 1
        else:
            result.pushes += 1
    return result
