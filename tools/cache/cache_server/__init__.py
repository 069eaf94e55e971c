"""Bazel HTTP remote cache (GET/HEAD/PUT /ac/<sha256> and /cas/<sha256>) backed by S3.

A bounded local disk tier (LRU by last access) sits in front of the bucket. Every object is
checked on the way in and on the way out: CAS blobs must hash to their key and action-cache
entries must parse as build.bazel.remote.execution.v2.ActionResult messages. S3 is never on the
critical path of a build: reads fall back to a miss when S3 is slow or down (short timeouts and a
circuit breaker), and writes land on disk first and reach S3 through a bounded background queue
with retries.

Run by tools/cache/server.py. Modules, one job each:
    main.py             flags, logging, wiring the parts together
    http_handler.py     Bazel's HTTP cache protocol (GET/HEAD/PUT) and /status
    blob_cache.py       the tiers combined: verified reads, single-flight S3 fetches, writes
    disk_tier.py        the bounded local disk tier, least recently used out first
    s3_tier.py          the bucket; its errors become S3Unavailable
    circuit_breaker.py  skips S3 after repeated failures
    uploader.py         the background upload queue: bounded, retried, survives restarts
    action_result.py    the ActionResult schema and its validation
    stats.py            counters for /status and the per-interval log line
    errors.py           constants and the two exceptions every part shares

Self-contained (standard library + boto3 + protobuf; relative imports only) so that it runs as a
plain script, before Bazel runs.
"""
