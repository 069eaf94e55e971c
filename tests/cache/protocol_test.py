"""Bazel's HTTP cache protocol as the server speaks it: GET/HEAD/PUT, keep-alive, chunked bodies,
and the requests it refuses (411, 413, malformed chunks, clients that go away mid-upload)."""

from __future__ import annotations

import http.client
import os
import socket

import pytest
from harness import action_result, sha256


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

    # Chunk extensions and trailers are part of the protocol.
    response = raw_exchange(
        server,
        put_head(sha256(b"abc"), "Transfer-Encoding: chunked")
        + b"3;name=value\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200"), response
    assert server.get("cas", sha256(b"abc")) == (200, b"abc")


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


def put_head(digest: str, *headers: str, kind: str = "cas") -> bytes:
    lines = [f"PUT /{kind}/{digest} HTTP/1.1", "Host: cache", *headers, "", ""]
    return "\r\n".join(lines).encode()


def raw_exchange(server, request: bytes, then_send: bytes = b"") -> bytes:
    """Sends `request` (then `then_send`, if the connection is still open) on a fresh socket and
    returns everything the server answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as raw:
        raw.sendall(request)
        response = raw.recv(65536)
        if then_send:
            try:
                raw.sendall(then_send)
            except OSError:  # closed by the server already
                pass
        raw.shutdown(socket.SHUT_WR)
        while chunk := raw.recv(65536):
            response += chunk
    return response


def closes_connection(server, request: bytes) -> bytes:
    """The response to `request`, checking that the server then closed the connection although
    the client kept its side open (a recv timeout here means the server waited for more)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as raw:
        raw.sendall(request)
        response = b""
        while chunk := raw.recv(65536):
            response += chunk
    return response


@pytest.mark.parametrize(
    "size_line",
    [b"-1", b"+3", b" 3", b"0x3", b"3 ", b"zz", b"", b"1" * 17, b"3\x00"],
)
def test_malformed_chunk_size_is_400_and_closes_the_connection(servers, size_line):
    server = servers()
    blob = b"abc"
    # Before the fix, "-1" made the server read (and buffer) the body until the client closed.
    response = closes_connection(
        server,
        put_head(sha256(blob), "Transfer-Encoding: chunked")
        + size_line
        + b"\r\nabc\r\n0\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 400"), response
    assert b"malformed chunk size line" in response
    assert server.get("cas", sha256(blob))[0] == 404
    assert server.status()["totals"]["rejected_puts"] == 1


def test_chunk_without_its_crlf_is_400(servers):
    server = servers()
    response = closes_connection(
        server,
        put_head(sha256(b"abc"), "Transfer-Encoding: chunked") + b"3\r\nabcX0\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 400"), response
    assert b"not followed by CRLF" in response
    assert server.get("cas", sha256(b"abc"))[0] == 404


def test_put_without_a_valid_length_or_chunking_is_411_or_400(servers):
    server = servers()
    response = closes_connection(server, put_head(sha256(b"abc")))
    assert response.startswith(b"HTTP/1.1 411"), response
    assert b"Content-Length or chunked" in response
    response = closes_connection(server, put_head(sha256(b"abc"), "Content-Length: -1"))
    assert response.startswith(b"HTTP/1.1 400"), response
    assert b"invalid Content-Length '-1'" in response


def test_too_large_puts_are_413_and_not_stored(servers):
    server = servers(args=["--disk-limit=1M"])
    key = sha256(b"action")
    # Announced sizes are refused before any of the body is read.
    response = closes_connection(
        server, put_head(key, f"Content-Length: {(16 << 20) + 1}", kind="ac")
    )
    assert response.startswith(b"HTTP/1.1 413"), response
    assert b"action-cache entry is at most" in response
    blob = os.urandom((1 << 20) + 1)  # larger than the whole disk tier
    response = closes_connection(
        server, put_head(sha256(blob), f"Content-Length: {len(blob)}")
    )
    assert response.startswith(b"HTTP/1.1 413"), response
    # A chunked body is cut off once it passes the limit (sent whole, so nothing is unread).
    response = closes_connection(
        server,
        put_head(sha256(blob), "Transfer-Encoding: chunked")
        + f"{len(blob):x}\r\n".encode()
        + blob,
    )
    assert response.startswith(b"HTTP/1.1 413"), response
    assert b"disk tier's limit" in response
    assert server.get("cas", sha256(blob))[0] == 404
    assert server.get("ac", key)[0] == 404
    assert server.status()["totals"]["rejected_puts"] == 3


@pytest.mark.parametrize("encoding", ["sized", "chunked"])
def test_client_dropping_mid_upload_leaves_no_entry(servers, moto_s3, prefix, encoding):
    server = servers(s3=moto_s3, prefix=prefix)
    blob = os.urandom(200_000)
    digest = sha256(blob)
    if encoding == "sized":
        head = put_head(digest, f"Content-Length: {len(blob)}")
        partial = blob[:100_000]
    else:
        head = put_head(digest, "Transfer-Encoding: chunked")
        partial = f"{len(blob):x}\r\n".encode() + blob[:100_000]
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as raw:
        raw.sendall(head + partial)
    # Gone mid-body: the server logs that the client abandoned the PUT.
    server.wait_for_log("abandoned by the client")
    # A complete upload after it still works; the broken one left nothing behind.
    other = os.urandom(1000)
    assert server.put("cas", sha256(other), other) == 200
    status = server.wait_for_uploads()
    assert server.get("cas", digest)[0] == 404
    assert status["totals"]["puts"] == 1
    assert moto_s3.object(f"{prefix}/cas/{digest}") is None
    assert moto_s3.object(f"{prefix}/cas/{sha256(other)}") == other
    for leftovers in ("blobs/tmp", "pending", "uploading"):
        assert not list((server.cache_dir / leftovers).iterdir()), leftovers
    assert not list(server.cache_dir.glob(f"blobs/cas/*/{digest}"))
