"""Protocol, integrity and availability tests of tools/cache/server.py with moto's S3 as bucket."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import socket
import time
import uuid

import pytest
from harness import BUCKET, TEST_CREDENTIALS, CacheServer, MotoS3, free_port, sha256

from tools.cache.cache_server.action_result import ActionResult


@pytest.fixture(scope="module")
def moto_s3():
    s3 = MotoS3().start()
    yield s3
    s3.stop()


@pytest.fixture
def servers(tmp_path):
    """Starts cache servers on demand and stops them all after the test."""
    started = []

    def start(name="cache", **kwargs) -> CacheServer:
        server = CacheServer(tmp_path / name, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:12]}"


def action_result(*blobs: bytes, **fields) -> bytes:
    result = ActionResult(exit_code=0, **fields)
    for index, blob in enumerate(blobs):
        output = result.output_files.add(path=f"bazel-out/k8-fastbuild/bin/out{index}")
        output.digest.hash = sha256(blob)
        output.digest.size_bytes = len(blob)
    result.execution_metadata.worker = "test"
    return result.SerializeToString()


def test_put_get_head_round_trip(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix)
    blob = b"hello, cache"
    digest = sha256(blob)
    entry = action_result(blob)
    action_key = sha256(b"some action")

    assert server.put("cas", digest, blob) == 200
    assert server.put("ac", action_key, entry) == 200

    assert server.get("cas", digest) == (200, blob)
    assert server.get("ac", action_key) == (200, entry)
    # Bazel appends /ac/ and /cas/ to the path of --remote_cache=http://host:port/some/prefix.
    assert server.request("GET", f"/some/prefix/cas/{digest}") == (200, blob)
    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    connection.request("HEAD", f"/cas/{digest}")
    response = connection.getresponse()
    assert (response.status, response.getheader("Content-Length")) == (
        200,
        str(len(blob)),
    )
    response.read()
    connection.close()

    server.wait_for_uploads()
    assert moto_s3.object(f"{prefix}/cas/{digest}") == blob
    assert moto_s3.object(f"{prefix}/ac/{action_key}") == entry


def test_keep_alive_connection_carries_many_requests(servers):
    server = servers()
    connection = http.client.HTTPConnection("127.0.0.1", server.port)

    def over_one_connection(method, path, body=None):
        return server.request(method, path, body=body, connection=connection)

    for _ in range(3):
        blob = os.urandom(1000)
        path = f"/cas/{sha256(blob)}"
        assert over_one_connection("GET", path)[0] == 404
        assert over_one_connection("PUT", "/cas/" + "0" * 64, blob)[0] == 400
        assert over_one_connection("PUT", path, blob)[0] == 200
        assert over_one_connection("GET", path) == (200, blob)
    connection.close()


def test_chunked_put_is_stored(servers):
    server = servers()
    blob = os.urandom(300_000)
    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    connection.request(
        "PUT",
        f"/cas/{sha256(blob)}",
        body=iter([blob[:1000], blob[1000:]]),
        encode_chunked=True,
    )
    assert connection.getresponse().status == 200
    connection.close()
    assert server.get("cas", sha256(blob)) == (200, blob)

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(
            f"PUT /cas/{sha256(b'x')} HTTP/1.1\r\nHost: cache\r\n"
            "Transfer-Encoding: chunked\r\n\r\nnot-hex\r\n".encode()
        )
        response = b""
        while chunk := raw.recv(
            1000
        ):  # the server closes the connection after this error
            response += chunk
    assert response.startswith(b"HTTP/1.1 400"), response
    assert b"malformed chunk size" in response


def test_missing_keys_are_misses(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix)
    digest = sha256(b"never stored")
    for kind in ("ac", "cas"):
        assert server.get(kind, digest)[0] == 404
        assert server.request("HEAD", f"/{kind}/{digest}")[0] == 404
    assert server.request("GET", "/nothing/here")[0] == 404
    assert server.request("GET", "/cas/NOT-A-HASH")[0] == 404
    totals = server.status()["totals"]
    assert (totals["ac_misses"], totals["cas_misses"], totals["s3_errors"]) == (1, 1, 0)


def test_cas_put_with_wrong_hash_is_rejected_and_nothing_is_stored(
    servers, moto_s3, prefix
):
    server = servers(s3=moto_s3, prefix=prefix)
    claimed = sha256(b"what the client claims")
    code, body = server.request(
        "PUT", f"/cas/{claimed}", body=b"what it actually sends"
    )
    assert code == 400
    assert sha256(b"what it actually sends").encode() in body

    assert server.get("cas", claimed)[0] == 404
    status = server.wait_for_uploads()
    assert status["totals"]["rejected_puts"] == 1
    assert moto_s3.object(f"{prefix}/cas/{claimed}") is None
    assert not list((server.cache_dir / "blobs" / "cas").rglob("*" + claimed))
    assert not list((server.cache_dir / "blobs" / "tmp").iterdir())


def test_action_cache_accepts_only_action_results(servers):
    server = servers()
    key = sha256(b"action")
    garbage = [
        b"",
        b"hello world",
        b"\xff" * 64,
        action_result(b"x") + b"\x98\x06\x01",  # field 99: not an ActionResult field
    ]
    for body in garbage:
        assert server.put("ac", key, body) == 400, body
    bad_digest = ActionResult()
    bad_digest.output_files.add(path="out").digest.hash = "not-a-sha256"
    absolute = ActionResult()
    absolute.output_files.add(path="/etc/passwd").digest.hash = sha256(b"")
    for message in (bad_digest, absolute):
        assert server.put("ac", key, message.SerializeToString()) == 400
    assert server.get("ac", key)[0] == 404
    assert server.put("ac", key, action_result()) == 200
    assert server.status()["totals"]["rejected_puts"] == len(garbage) + 2


def test_action_cache_entry_with_unknown_metadata_fields_is_accepted(servers):
    # Newer clients may add execution metadata fields this server does not know.
    server = servers()
    result = ActionResult(exit_code=0)
    # execution_metadata (field 9) holding worker="w" plus an unknown field 20 (varint 1).
    result.MergeFromString(b"\x4a\x06\x0a\x01w\xa0\x01\x01")
    assert result.execution_metadata.worker == "w"
    assert server.put("ac", sha256(b"a"), result.SerializeToString()) == 200


def test_action_cache_hit_needs_its_output_blobs(servers):
    server = servers()
    output = b"the output file"
    key = sha256(b"action with one output")
    assert server.put("ac", key, action_result(output)) == 200
    assert server.get("ac", key)[0] == 404, "AC hit although its output is missing"
    assert server.put("cas", sha256(output), output) == 200
    assert server.get("ac", key)[0] == 200


def test_action_cache_hit_from_s3_needs_its_blobs_in_s3(servers, moto_s3, prefix):
    writer = servers("writer", s3=moto_s3, prefix=prefix)
    present, absent = b"uploaded output", b"output nobody uploaded"
    complete, incomplete = sha256(b"complete action"), sha256(b"incomplete action")
    assert writer.put("cas", sha256(present), present) == 200
    assert writer.put("ac", complete, action_result(present)) == 200
    assert writer.put("ac", incomplete, action_result(present, absent)) == 200
    writer.wait_for_uploads()

    reader = servers(
        "reader", s3=moto_s3, prefix=prefix
    )  # empty disk tier: all from S3
    assert reader.get("ac", complete)[0] == 200
    assert reader.get("ac", incomplete)[0] == 404
    assert (
        reader.status()["disk"]["entries"] == 2
    )  # both entries, but no blob was fetched


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


def test_corrupted_objects_in_s3_are_misses_and_are_deleted(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix)
    claimed = sha256(b"original content")
    moto_s3.client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/cas/{claimed}", Body=b"bit rot"
    )
    action = sha256(b"action")
    moto_s3.client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/ac/{action}", Body=b"not a proto"
    )

    assert server.get("cas", claimed)[0] == 404
    assert server.get("ac", action)[0] == 404
    assert moto_s3.object(f"{prefix}/cas/{claimed}") is None
    assert moto_s3.object(f"{prefix}/ac/{action}") is None
    assert server.status()["totals"]["integrity_deletes"] == 2


def test_corrupted_blob_on_disk_is_deleted_and_refetched_from_s3(
    servers, moto_s3, prefix
):
    server = servers(s3=moto_s3, prefix=prefix)
    blob = b"precious bytes" * 1000
    digest = sha256(blob)
    assert server.put("cas", digest, blob) == 200
    server.wait_for_uploads()
    (server.cache_dir / "blobs" / "cas" / digest[:2] / digest).write_bytes(
        b"flipped bits"
    )

    assert server.get("cas", digest) == (200, blob)
    totals = server.status()["totals"]
    assert (totals["integrity_deletes"], totals["hits_from_s3"]) == (1, 1)


def test_corrupted_blob_on_disk_without_s3_is_a_miss(servers):
    server = servers()
    blob = b"precious bytes"
    digest = sha256(blob)
    assert server.put("cas", digest, blob) == 200
    path = server.cache_dir / "blobs" / "cas" / digest[:2] / digest
    path.write_bytes(b"flipped bits")
    assert server.get("cas", digest)[0] == 404
    assert not path.exists()


def test_s3_down_gives_misses_and_successful_puts(servers, prefix):
    down = MotoS3(port=free_port())  # nothing listens on this port
    server = servers(s3=down, prefix=prefix, args=["--breaker-threshold=2"])
    blob = b"stored while S3 is down"
    started = time.monotonic()
    assert server.get("cas", sha256(blob))[0] == 404
    assert server.request("HEAD", f"/cas/{sha256(blob)}")[0] == 404
    assert server.put("cas", sha256(blob), blob) == 200
    assert server.get("cas", sha256(blob)) == (200, blob)
    assert server.get("ac", sha256(b"x"))[0] == 404
    assert time.monotonic() - started < 10
    status = server.status()
    assert status["s3"]["circuit"] == "open"
    assert status["totals"]["s3_errors"] >= 2
    assert status["uploads"]["in_flight"] + status["uploads"]["queued"] == 1


def test_slow_s3_is_cut_short_by_timeouts_and_the_circuit_breaker(servers, prefix):
    # A listening socket that never answers: connections succeed, responses never come.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as black_hole:
        slow = MotoS3(port=black_hole.getsockname()[1])
        server = servers(
            s3=slow,
            prefix=prefix,
            args=[
                "--s3-read-timeout=1",
                "--breaker-threshold=2",
                "--breaker-cooldown=60",
            ],
        )
        timings = []
        for index in range(4):
            started = time.monotonic()
            assert server.get("cas", sha256(str(index).encode()))[0] == 404
            timings.append(time.monotonic() - started)
        assert all(0.9 < t < 5 for t in timings[:2]), timings
        assert all(t < 0.5 for t in timings[2:]), (
            timings
        )  # circuit open: S3 is not asked
        assert server.status()["s3"]["circuit"] == "open"


def test_uploads_wait_for_s3_and_survive_a_restart(servers, tmp_path, prefix):
    s3 = MotoS3().start()
    s3.stop()
    args = ["--breaker-threshold=1", "--breaker-cooldown=0.5"]
    server = servers("cache", s3=s3, prefix=prefix, args=args)
    blobs = [os.urandom(2000) for _ in range(3)]
    for blob in blobs:
        assert server.put("cas", sha256(blob), blob) == 200
    time.sleep(2)  # several failed attempts while S3 is down
    assert server.status()["totals"]["uploads_failed"] == 0
    server.stop()  # leaves the unfinished uploads on disk

    def unfinished_uploads():
        return [
            *(tmp_path / "cache" / "pending").iterdir(),
            *(tmp_path / "cache" / "uploading").iterdir(),
        ]

    assert len(unfinished_uploads()) == 3

    s3.start()
    try:
        restarted = servers("cache", s3=s3, prefix=prefix, args=args)
        restarted.wait_for_uploads()
        for blob in blobs:
            assert s3.object(f"{prefix}/cas/{sha256(blob)}") == blob
        assert not unfinished_uploads()
    finally:
        s3.stop()


def test_uploads_resume_when_s3_comes_back(servers, prefix):
    s3 = MotoS3().start()
    s3.stop()
    server = servers(
        s3=s3, prefix=prefix, args=["--breaker-threshold=1", "--breaker-cooldown=0.5"]
    )
    blob = os.urandom(5000)
    assert server.put("cas", sha256(blob), blob) == 200
    time.sleep(1.5)
    s3.start()
    try:
        server.wait_for_uploads(timeout=30)
        assert s3.object(f"{prefix}/cas/{sha256(blob)}") == blob
        assert server.status()["totals"]["uploads_done"] == 1
    finally:
        s3.stop()


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


def test_disk_tier_evicts_least_recently_used_blobs(servers):
    server = servers(args=["--disk-limit=1M"])
    blobs = {name: bytes([ord(name)]) * 400_000 for name in "abcd"}
    for name in "ab":
        assert server.put("cas", sha256(blobs[name]), blobs[name]) == 200
    assert (
        server.get("cas", sha256(blobs["a"]))[0] == 200
    )  # a is now more recent than b
    assert server.put("cas", sha256(blobs["c"]), blobs["c"]) == 200
    assert server.get("cas", sha256(blobs["b"]))[0] == 404
    assert server.get("cas", sha256(blobs["a"]))[0] == 200
    assert server.get("cas", sha256(blobs["c"]))[0] == 200
    disk = server.status()["disk"]
    assert disk["entries"] == 2 and disk["bytes"] <= 1 << 20


def test_large_blob_streams_without_being_held_in_memory(
    servers, moto_s3, prefix, tmp_path
):
    size = 200 << 20
    source = tmp_path / "large.bin"
    hasher = hashlib.sha256()
    with open(source, "wb") as out:
        for _ in range(size >> 20):
            chunk = os.urandom(1 << 20)
            hasher.update(chunk)
            out.write(chunk)
    digest = hasher.hexdigest()

    def download(server) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.request("GET", f"/cas/{digest}")
        response = connection.getresponse()
        assert response.status == 200
        received = hashlib.sha256()
        while chunk := response.read(1 << 20):
            received.update(chunk)
        connection.close()
        return received.hexdigest()

    writer = servers("writer", s3=moto_s3, prefix=prefix)
    writer_baseline = writer.rss_bytes()
    connection = http.client.HTTPConnection("127.0.0.1", writer.port, timeout=120)
    connection.blocksize = 1 << 20
    with open(source, "rb") as body:
        connection.request(
            "PUT", f"/cas/{digest}", body=body, headers={"Content-Length": str(size)}
        )
    assert connection.getresponse().status == 200
    connection.close()
    assert download(writer) == digest
    writer.wait_for_uploads(timeout=300)

    reader = servers("reader", s3=moto_s3, prefix=prefix)
    reader_baseline = reader.rss_bytes()
    assert download(reader) == digest  # through S3 into a fresh disk tier
    assert reader.status()["totals"]["s3_bytes_down"] == size

    growth = {
        "put+get+upload": writer.peak_rss_bytes() - writer_baseline,
        "s3 download+get": reader.peak_rss_bytes() - reader_baseline,
    }
    print(
        f"peak RSS growth for a {size >> 20} MiB blob (MiB):",
        {k: v >> 20 for k, v in growth.items()},
    )
    assert all(value < 100 << 20 for value in growth.values()), growth


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


def test_status_counts_requests_and_logs_per_interval(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix, args=["--stats-interval=0.5"])
    blob = b"counted"
    server.put("cas", sha256(blob), blob)
    server.get("cas", sha256(blob))
    server.get("cas", sha256(b"absent"))
    time.sleep(1.2)
    status = server.status()
    assert status["service"] == "bazel-s3-cache"
    assert status["s3"]["circuit"] == "closed"
    totals = status["totals"]
    assert (totals["puts"], totals["cas_hits"], totals["cas_misses"]) == (1, 1, 1)
    assert (totals["bytes_in"], totals["bytes_out"]) == (len(blob), len(blob))
    assert "hits 1 (ac 0, cas 1, from s3 0), misses 1" in server.log()


def test_second_server_on_the_same_directory_refuses_to_start(servers):
    servers("shared")
    with pytest.raises(RuntimeError, match="another cache server already uses"):
        servers("shared")
