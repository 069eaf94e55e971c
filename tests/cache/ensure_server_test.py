"""tools/cache/ensure_server.py: configuration, starting once, reuse, restart and stop."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sys
import urllib.request

import pytest
from harness import TEST_CREDENTIALS, wait_until

from tools.cache import ensure_server


@pytest.fixture
def config(tmp_path, moto_s3, monkeypatch):
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    # The server process needs the packages this test process imports.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in sys.path if os.path.isdir(p))
    )
    settings = ensure_server.CacheConfig(
        bucket="cache-tests",
        prefix="ensure-server",
        endpoint_url=moto_s3.endpoint_url,
        region="us-east-1",
        state_dir=tmp_path / "state",
        server_command=(sys.executable, str(ensure_server.SERVER_SCRIPT)),
    )
    yield settings
    ensure_server.stop_server(settings)


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "/status", timeout=5) as response:
        return json.loads(response.read())


def test_no_bucket_means_no_server(tmp_path):
    assert ensure_server.load_config({"HOME": str(tmp_path)}) is None


def test_config_comes_from_the_user_file_and_the_environment_wins(tmp_path):
    config_file = tmp_path / "config"
    config_file.write_text(
        "# team cache\n"
        "BAZEL_CACHE_S3_BUCKET=team-bucket\n"
        "export BAZEL_CACHE_S3_REGION='eu-west-1'\n"
        "BAZEL_CACHE_SERVER_COMMAND=/opt/python/bin/python3 -X utf8 'my server.py'\n"
    )
    env = {
        "HOME": str(tmp_path),
        "BAZEL_CACHE_CONFIG": str(config_file),
        "BAZEL_CACHE_S3_REGION": "us-west-2",
    }
    config = ensure_server.load_config(env)
    assert config.bucket == "team-bucket"
    assert config.region == "us-west-2"
    assert config.prefix == "bazel-cache"
    assert config.server_command == (
        "/opt/python/bin/python3",
        "-X",
        "utf8",
        "my server.py",
    )
    assert config.state_dir == tmp_path / ".cache" / "bazel-s3-cache"

    config_file.write_text("BUCKET=typo\n")
    with pytest.raises(
        ensure_server.CacheServerError, match=r"config:1: expected NAME=VALUE"
    ):
        ensure_server.load_config(env)


def test_starts_once_and_is_reused(config):
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        urls = set(pool.map(lambda _: ensure_server.ensure_server(config), range(4)))
    assert len(urls) == 1
    url = urls.pop()
    assert url.startswith("http://127.0.0.1:")
    first = status(url)
    assert first["s3"]["bucket"] == "cache-tests"
    assert ensure_server.ensure_server(config) == url
    assert status(url)["pid"] == first["pid"]
    assert ensure_server.bazelrc_lines(url) == [
        "build --config=s3cache",
        f"build --remote_cache={url}",
    ]


def test_a_dead_server_is_replaced(config):
    url = ensure_server.ensure_server(config)
    pid = status(url)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        "the killed server to stop answering",
        lambda: ensure_server.running_server_url(config) is None,
    )
    new_url = ensure_server.ensure_server(config)
    assert status(new_url)["pid"] != pid


def test_stop_stops_only_the_server_it_started(config, tmp_path):
    other = ensure_server.CacheConfig(
        bucket="another-bucket", state_dir=tmp_path / "state"
    )
    assert ensure_server.stop_server(other) is False  # never started: nothing to stop
    url = ensure_server.ensure_server(config)
    pid = status(url)["pid"]
    assert ensure_server.stop_server(config) is True
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert ensure_server.running_server_url(config) is None


def test_a_server_that_cannot_start_is_reported(config, tmp_path):
    broken = ensure_server.CacheConfig(
        bucket="b",
        state_dir=tmp_path / "broken",
        server_command=(sys.executable, "-c", "print('no boto3 here'); exit(3)"),
    )
    with pytest.raises(
        ensure_server.CacheServerError, match=r"status 3(.|\n)*no boto3 here"
    ):
        ensure_server.ensure_server(broken)
    missing = ensure_server.CacheConfig(
        bucket="b",
        state_dir=tmp_path / "missing",
        server_command=("/nonexistent/python3",),
    )
    with pytest.raises(
        ensure_server.CacheServerError, match="BAZEL_CACHE_SERVER_COMMAND"
    ):
        ensure_server.ensure_server(missing)


def test_the_server_writes_its_own_rotating_log(config):
    url = ensure_server.ensure_server(config)
    log = config.server_dir() / "server.log"
    wait_until(
        f"the server to log that it serves {url}", lambda: url in log.read_text()
    )
    # Logging goes to the file the server rotates, not to its captured output.
    assert "serving http" not in (config.server_dir() / "server.out").read_text()
