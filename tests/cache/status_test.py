"""/status (counters, hit rates per tier, disk tier size), the per-interval summary log line, the
rotating log file, and credentials kept out of all of them."""

from __future__ import annotations

import re

from harness import BUCKET, TEST_CREDENTIALS, sha256, wait_until


def test_status_and_logs_never_show_credentials(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix)
    blob = b"some blob"
    server.put("cas", sha256(blob), blob)
    server.get("cas", sha256(b"missing"))
    status_text = server.request("GET", "/status")[1].decode()
    server.wait_for_uploads()
    server.stop()
    for secret in (
        TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
    ):
        assert secret not in status_text
        assert secret not in server.log()
    assert BUCKET in status_text


SUMMARY = re.compile(r"hits (\d+) \(ac (\d+), cas (\d+), from s3 (\d+)\), misses (\d+)")


def logged_totals(log: str) -> tuple[int, int]:
    """(hits, misses) summed over every per-interval summary line in the log."""
    lines = SUMMARY.findall(log)
    return sum(int(line[0]) for line in lines), sum(int(line[4]) for line in lines)


def test_status_counts_requests_and_logs_per_interval(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix, args=["--stats-interval=0.2"])
    blob = b"counted"
    server.put("cas", sha256(blob), blob)
    server.get("cas", sha256(blob))
    server.get("cas", sha256(b"absent"))
    status = server.status()
    assert status["service"] == "bazel-s3-cache"
    assert status["s3"]["circuit"] == "closed"
    totals = status["totals"]
    assert (totals["puts"], totals["cas_hits"], totals["cas_misses"]) == (1, 1, 1)
    assert (totals["bytes_in"], totals["bytes_out"]) == (len(blob), len(blob))
    # The requests may fall into one interval or two: the summary lines add up to them.
    wait_until(
        "summary lines adding up to 1 hit and 1 miss",
        lambda: logged_totals(server.log()) == (1, 1),
    )


def test_status_reports_hit_rates_per_tier_and_the_disk_tier_size(
    servers, moto_s3, prefix
):
    writer = servers("writer", s3=moto_s3, prefix=prefix)
    blob = b"x" * 5000
    assert writer.put("cas", sha256(blob), blob) == 200
    writer.wait_for_uploads()

    reader = servers("reader", s3=moto_s3, prefix=prefix)  # empty disk tier
    assert reader.get("cas", sha256(blob)) == (200, blob)  # disk miss, S3 hit
    assert reader.get("cas", sha256(blob)) == (200, blob)  # disk hit
    assert reader.get("cas", sha256(b"nowhere"))[0] == 404  # disk miss, S3 miss
    assert reader.get("ac", sha256(b"no action"))[0] == 404  # disk miss, S3 miss
    status = reader.status()
    assert status["hit_rates"]["cas"] == {
        "served": {"hits": 2, "misses": 1, "hit_rate": 0.6667},
        "disk": {"hits": 1, "misses": 2, "hit_rate": 0.3333},
        "s3": {"hits": 1, "misses": 1, "hit_rate": 0.5},
    }
    assert status["hit_rates"]["ac"]["served"] == {
        "hits": 0,
        "misses": 1,
        "hit_rate": 0.0,
    }
    assert (status["disk"]["entries"], status["disk"]["bytes"]) == (1, len(blob))


def test_log_file_rotates_by_size(servers, tmp_path):
    log_file = tmp_path / "rotating.log"
    server = servers(
        args=[f"--log-file={log_file}", "--log-max-bytes=2K", "--log-backups=2"]
    )
    for index in range(100):  # each request is a DEBUG line of about 100 bytes
        assert server.get("cas", sha256(str(index).encode()))[0] == 404
    server.stop()
    files = sorted(path.name for path in tmp_path.glob("rotating.log*"))
    assert files == ["rotating.log", "rotating.log.1", "rotating.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2048, name
    assert "GET /cas/" in (tmp_path / "rotating.log").read_text()
