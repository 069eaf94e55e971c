"""A 200 MiB blob streams through PUT, GET, the S3 upload and the S3 download without being held
in memory."""

from __future__ import annotations

import hashlib
import http.client
import os


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
