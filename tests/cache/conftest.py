"""Fixtures for the cache server tests: moto's S3 server, cache servers, a fresh key prefix."""

from __future__ import annotations

import uuid

import pytest
from harness import CacheServer, MotoS3
from s3_faults import S3Gate


@pytest.fixture(scope="module")
def moto_s3():
    s3 = MotoS3().start()
    yield s3
    s3.stop()


@pytest.fixture
def gate(moto_s3):
    """An S3Gate in front of moto: counts requests, can be down, can hold GETs."""
    s3_gate = S3Gate(moto_s3.port)
    yield s3_gate
    s3_gate.close()


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
    """A key prefix of the test's own in the shared bucket."""
    return f"t-{uuid.uuid4().hex[:12]}"
