"""The S3 tier: misses rather than errors when S3 fails, the circuit breaker, the upload queue
(waiting for S3, surviving restarts, dropping when full, giving up), and one S3 fetch shared by
concurrent misses. Requests are counted where S3 sees them (an S3Gate in front of moto)."""

from __future__ import annotations

import concurrent.futures
import os
import threading

from harness import BUCKET, action_result, sha256
from s3_faults import BlackHole


def test_blobs_come_back_from_s3_when_the_disk_tier_is_gone(servers, moto_s3, prefix):
    first = servers("first", s3=moto_s3, prefix=prefix)
    blob = os.urandom(3 << 20)
    key = sha256(b"action")
    assert first.put("cas", sha256(blob), blob) == 200
    assert first.put("ac", key, action_result(blob)) == 200
    first.wait_for_uploads()

    second = servers("second", s3=moto_s3, prefix=prefix)
    assert second.get("ac", key)[0] == 200
    assert second.get("cas", sha256(blob)) == (200, blob)
    assert second.get("cas", sha256(blob)) == (200, blob)
    totals = second.status()["totals"]
    assert (
        totals["hits_from_s3"] == 2
    )  # the AC entry and the blob; the repeat came from disk
    assert totals["s3_bytes_down"] >= len(blob)


def test_concurrent_writers_and_readers_of_one_key(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix)
    blob = os.urandom(4 << 20)
    digest = sha256(blob)

    def write(_):
        return server.put("cas", digest, blob)

    def read(_):
        code, body = server.get("cas", digest)
        return (
            code if code == 404 or body == blob else f"torn read of {len(body)} bytes"
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        writes = pool.map(write, range(12))
        reads = pool.map(read, range(12))
        assert set(writes) == {200}
        assert set(reads) <= {200, 404}
    assert server.get("cas", digest) == (200, blob)
    server.wait_for_uploads()
    assert moto_s3.object(f"{prefix}/cas/{digest}") == blob
    for leftovers in ("blobs/tmp", "pending", "uploading"):
        assert not list((server.cache_dir / leftovers).iterdir()), leftovers
    assert server.status()["disk"]["entries"] == 1


def test_s3_down_gives_misses_and_successful_puts(servers, gate, prefix):
    gate.set_down(True)
    server = servers(
        s3=gate,
        prefix=prefix,
        args=["--breaker-threshold=2", "--breaker-cooldown=600"],
    )
    blob = b"stored while S3 is down"
    assert server.get("cas", sha256(blob))[0] == 404
    assert server.request("HEAD", f"/cas/{sha256(blob)}")[0] == 404
    assert server.put("cas", sha256(blob), blob) == 200
    assert server.get("cas", sha256(blob)) == (200, blob)
    assert server.get("ac", sha256(b"x"))[0] == 404
    status = server.status()
    assert status["s3"]["circuit"] == "open"
    assert status["totals"]["s3_errors"] >= 2
    assert status["uploads"]["in_flight"] + status["uploads"]["queued"] == 1
    # With the circuit open, a miss does not ask S3 at all.
    asked = len(gate.requests)
    assert server.get("cas", sha256(b"another miss"))[0] == 404
    assert len(gate.requests) == asked


def test_slow_s3_is_cut_short_by_timeouts_and_the_circuit_breaker(servers, prefix):
    hole = BlackHole()  # connections succeed, answers never come
    try:
        server = servers(
            s3=hole,
            prefix=prefix,
            args=[
                "--s3-read-timeout=1",
                "--breaker-threshold=2",
                "--breaker-cooldown=600",
            ],
        )
        for index in range(4):
            assert server.get("cas", sha256(str(index).encode()))[0] == 404
        status = server.status()
        assert status["s3"]["circuit"] == "open"
        # Two reads timed out; the next two were misses without asking S3.
        assert status["totals"]["s3_errors"] == 2
        assert status["hit_rates"]["cas"]["s3"]["misses"] == 4
        assert len(hole.connections) <= 2
    finally:
        hole.close()


def unfinished_uploads(cache_dir):
    return [*(cache_dir / "pending").iterdir(), *(cache_dir / "uploading").iterdir()]


def test_uploads_wait_for_s3_and_survive_a_restart(servers, gate, moto_s3, prefix):
    gate.set_down(True)
    args = ["--breaker-threshold=1", "--breaker-cooldown=0.2"]
    server = servers("cache", s3=gate, prefix=prefix, args=args)
    blobs = [os.urandom(2000) for _ in range(3)]
    for blob in blobs:
        assert server.put("cas", sha256(blob), blob) == 200
    # More failed PUTs than --upload-attempts (5): waiting for S3 does not use attempts up.
    gate.wait_for("PUT", 8)
    assert server.status()["totals"]["uploads_failed"] == 0
    server.stop()  # leaves the unfinished uploads on disk
    assert len(unfinished_uploads(server.cache_dir)) == 3

    gate.set_down(False)
    restarted = servers("cache", s3=gate, prefix=prefix, args=args)
    restarted.wait_for_uploads()
    for blob in blobs:
        assert moto_s3.object(f"{prefix}/cas/{sha256(blob)}") == blob
    assert not unfinished_uploads(server.cache_dir)


def test_uploads_resume_when_s3_comes_back(servers, gate, moto_s3, prefix):
    gate.set_down(True)
    server = servers(
        s3=gate,
        prefix=prefix,
        args=["--breaker-threshold=1", "--breaker-cooldown=0.2"],
    )
    blob = os.urandom(5000)
    assert server.put("cas", sha256(blob), blob) == 200
    gate.wait_for("PUT", 2)
    gate.set_down(False)
    server.wait_for_status(
        "the upload once S3 is back", lambda s: s["totals"]["uploads_done"] == 1
    )
    assert moto_s3.object(f"{prefix}/cas/{sha256(blob)}") == blob


def test_full_upload_queue_drops_uploads_and_never_blocks_a_put(servers, prefix):
    hole = BlackHole()  # the one upload worker hangs on its first upload
    try:
        server = servers(
            s3=hole,
            prefix=prefix,
            args=[
                "--upload-workers=1",
                "--upload-queue-size=1",
                "--s3-read-timeout=600",
            ],
        )
        blobs = [os.urandom(1000) for _ in range(5)]
        for blob in blobs:
            assert server.put("cas", sha256(blob), blob) == 200
        status = server.status()
        uploads, dropped = status["uploads"], status["totals"]["uploads_dropped"]
        # At most one in flight and one queued; the rest were dropped and counted.
        assert uploads["queued"] <= 1 and uploads["in_flight"] <= 1, uploads
        assert uploads["queued"] + uploads["in_flight"] + dropped == len(blobs)
        assert dropped >= len(blobs) - 2
        assert len(unfinished_uploads(server.cache_dir)) == len(blobs) - dropped
        for blob in blobs:  # dropped only from the upload: the disk tier has them all
            assert server.get("cas", sha256(blob)) == (200, blob)
        assert "upload queue full: cas-" in server.log()
    finally:
        hole.close()


def test_upload_gives_up_after_its_attempts_and_reads_stay_misses(
    servers, moto_s3, prefix
):
    # moto answers every request for a bucket that does not exist with an error.
    server = servers(
        s3=moto_s3,
        prefix=prefix,
        args=[
            "--bucket=no-such-bucket",
            "--upload-attempts=2",
            "--breaker-threshold=3",
            "--breaker-cooldown=600",
        ],
    )
    blob = b"never reaches S3"
    assert server.put("cas", sha256(blob), blob) == 200
    status = server.wait_for_status(
        "the upload to give up",
        lambda s: s["totals"]["uploads_failed"] == 1 and s["uploads"]["in_flight"] == 0,
    )
    assert status["uploads"] == {"queued": 0, "in_flight": 0}
    assert (status["totals"]["s3_errors"], status["s3"]["circuit"]) == (2, "closed")
    # S3 errors are misses, not server errors; the third error opens the circuit.
    assert server.get("cas", sha256(b"first miss"))[0] == 404
    assert server.get("ac", sha256(b"second miss"))[0] == 404
    status = server.status()
    assert (status["totals"]["s3_errors"], status["s3"]["circuit"]) == (3, "open")
    assert server.get("cas", sha256(blob)) == (200, blob)  # still on disk
    assert not unfinished_uploads(server.cache_dir)


def test_concurrent_misses_of_one_key_share_one_s3_fetch(
    servers, gate, moto_s3, prefix
):
    blob = os.urandom(100_000)
    digest = sha256(blob)
    moto_s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/cas/{digest}", Body=blob)
    server = servers(s3=gate, prefix=prefix)
    key_path = f"/{prefix}/cas/{digest}"
    gate.hold_gets(f"/{BUCKET}{key_path}")
    clients = 8
    results = [None] * clients

    def fetch(index: int) -> None:
        results[index] = server.get("cas", digest)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    # The first miss's GET is held at S3; every other client's request waits for it.
    gate.wait_for("GET", 1, key_path)
    server.wait_for_status(
        f"{clients - 1} requests waiting for the shared fetch",
        lambda s: s["s3"]["requests_waiting_for_a_shared_fetch"] == clients - 1,
    )
    gate.release()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a GET did not finish within 120s"

    assert results == [(200, blob)] * clients
    assert gate.count("GET", key_path) == 1
    cas = server.status()["hit_rates"]["cas"]
    assert (cas["s3"]["hits"], cas["disk"]["hits"]) == (1, clients - 1)
