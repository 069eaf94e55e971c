"""The disk tier: bounded, least recently used out first, in that order after a restart too."""

from __future__ import annotations

import pytest
from harness import sha256


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


def test_second_server_on_the_same_directory_refuses_to_start(servers):
    servers("shared")
    with pytest.raises(RuntimeError, match="another cache server already uses"):
        servers("shared")


def test_lru_order_survives_a_restart(servers):
    args = ["--disk-limit=1M"]
    server = servers("cache", args=args)
    blobs = {name: bytes([ord(name)]) * 400_000 for name in "abc"}
    for name in "ab":
        assert server.put("cas", sha256(blobs[name]), blobs[name]) == 200
    assert server.get("cas", sha256(blobs["a"]))[0] == 200  # a: used after b
    server.stop()

    # The restarted server reloads the access order (from the files' mtimes): b goes first.
    restarted = servers("cache", args=args)
    assert restarted.status()["disk"]["entries"] == 2
    assert restarted.put("cas", sha256(blobs["c"]), blobs["c"]) == 200
    assert restarted.get("cas", sha256(blobs["b"]))[0] == 404
    assert restarted.get("cas", sha256(blobs["a"]))[0] == 200
    assert restarted.get("cas", sha256(blobs["c"]))[0] == 200
