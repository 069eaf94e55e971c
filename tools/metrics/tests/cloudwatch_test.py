"""`report --cloudwatch`: the history's figures as CloudWatch metrics, read back from moto's
server."""

import datetime
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tools.metrics import bep, cloudwatch, report, store

TESTDATA = Path(__file__).parent / "testdata"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
NAMESPACE = "ReceiptLambdas/Build"


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def client(endpoint, monkeypatch):
    # A fresh account per test: moto keeps metrics per account.
    return boto3.session.Session().client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def connection(tmp_path):
    connection = store.connect(tmp_path / "history.sqlite3")
    # The fixtures' builds, moved to the hour before NOW (CloudWatch takes two weeks back).
    for minutes, name in enumerate(
        ("cold_build", "incremental_build", "failed_build", "amd64_build")
    ):
        summary = bep.parse(TESTDATA / f"{name}.bep.json")._replace(
            started_at=(NOW - datetime.timedelta(minutes=50 - minutes)).timestamp()
        )
        store.add_build(connection, summary, None, [])
    store.add_push(
        connection,
        pushed_at=(NOW - datetime.timedelta(minutes=5)).timestamp(),
        registry="127.0.0.1:5055",
        seconds=9.5,
        images=[store.PushedImage("submit", "receipts/submit", 1234, 56, 789, 9.5)],
    )
    return connection


def statistic(client, namespace, name, dimensions, statistic="Sum"):
    points = client.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=NOW - datetime.timedelta(hours=2),
        EndTime=NOW,
        Period=3600 * 3,
        Statistics=[statistic],
    )["Datapoints"]
    return sum(point[statistic] for point in points)


def test_builds_and_pushes_read_back(client, connection):
    namespace = f"{NAMESPACE}/readback"
    sent = cloudwatch.publish(connection, namespace, client, now=NOW)
    assert (sent.builds, sent.pushes, sent.too_old) == (4, 1, 0)

    metrics = client.list_metrics(Namespace=namespace)["Metrics"]
    names = {metric["MetricName"] for metric in metrics}
    assert {
        "Builds",
        "BuildFailures",
        "BuildTime",
        "CacheHitRate",
        "PushUploadedBytes",
    } <= names
    dimensions = {
        tuple(sorted((d["Name"], d["Value"]) for d in metric["Dimensions"]))
        for metric in metrics
        if metric["MetricName"] == "BuildTime"
    }
    assert dimensions == {
        (("Configuration", "arm64"), ("Target", "build //handlers/...")),
        (
            ("Configuration", "arm64"),
            ("Target", "build //handlers/does_not_exist:image"),
        ),
        (
            ("Configuration", "amd64"),
            ("Target", "build //handlers/submit_to_openai:image"),
        ),
    }

    handlers = {"Target": "build //handlers/...", "Configuration": "arm64"}
    rows = connection.execute(
        "SELECT * FROM builds WHERE patterns = '//handlers/...' AND configuration = 'arm64'"
    ).fetchall()
    assert statistic(client, namespace, "Builds", handlers) == len(rows) == 2
    assert statistic(client, namespace, "BuildTime", handlers) == pytest.approx(
        sum(row["wall_seconds"] for row in rows)
    )
    failing = {
        "Target": "build //handlers/does_not_exist:image",
        "Configuration": "arm64",
    }
    assert statistic(client, namespace, "BuildFailures", failing) == 1
    push_dimensions = {"Registry": "127.0.0.1:5055"}
    assert statistic(client, namespace, "PushUploadedBytes", push_dimensions) == 1234
    assert statistic(client, namespace, "PushTime", push_dimensions) == 9.5


def test_each_row_is_sent_once_per_namespace(client, connection):
    namespace = f"{NAMESPACE}/once"
    first = cloudwatch.publish(connection, namespace, client, now=NOW)
    again = cloudwatch.publish(connection, namespace, client, now=NOW)
    assert first.builds == 4 and (again.builds, again.pushes, again.data_points) == (
        0,
        0,
        0,
    )
    handlers = {"Target": "build //handlers/...", "Configuration": "arm64"}
    assert statistic(client, namespace, "Builds", handlers) == 2
    other = cloudwatch.publish(connection, f"{NAMESPACE}/other", client, now=NOW)
    assert other.builds == 4


def test_data_older_than_two_weeks_is_left_out(client, connection):
    later = NOW + datetime.timedelta(days=15)
    sent = cloudwatch.publish(connection, f"{NAMESPACE}/old", client, now=later)
    assert (sent.builds, sent.pushes, sent.too_old) == (0, 0, 5)
    assert "5 older than 14 days left out" in sent.describe("x")


def test_report_flag_publishes(endpoint, connection, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    history = Path(connection.execute("PRAGMA database_list").fetchone()["file"])
    args = ["--history", str(history), "--output", str(tmp_path / "out")]
    assert report.run([*args, "--cloudwatch", f"{NAMESPACE}/cli"]) == 0
    out = capsys.readouterr().out
    assert f"CloudWatch {NAMESPACE}/cli: published 4 builds and 1 pushes" in out
