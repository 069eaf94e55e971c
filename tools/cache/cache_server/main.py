"""Flags, logging and wiring: the cache server's entry point (tools/cache/server.py runs it)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import logging.handlers
import os
import re
import signal
import threading

from . import __doc__ as package_doc
from .blob_cache import BlobCache
from .circuit_breaker import CircuitBreaker
from .disk_tier import DiskTier
from .http_handler import CacheHTTPServer
from .s3_tier import S3Store
from .stats import Stats, human_bytes
from .uploader import Uploader

log = logging.getLogger("s3cache")


def parse_size(text: str) -> int:
    """'10G', '512M', '64K' or a byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or e.g. 512M, 10G"
        )
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description=package_doc.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir", required=True, help="disk tier and upload staging"
    )
    parser.add_argument(
        "--disk-limit", type=parse_size, default=env("BAZEL_CACHE_DISK_LIMIT", "10G")
    )
    parser.add_argument(
        "--bucket", default=env("BAZEL_CACHE_S3_BUCKET", ""), help="empty: disk only"
    )
    parser.add_argument("--prefix", default=env("BAZEL_CACHE_S3_PREFIX", "bazel-cache"))
    parser.add_argument("--region", default=env("BAZEL_CACHE_S3_REGION", ""))
    parser.add_argument(
        "--endpoint-url", default=env("BAZEL_CACHE_S3_ENDPOINT_URL", "")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--port-file", help="written (atomically) once the server listens"
    )
    parser.add_argument("--s3-connect-timeout", type=float, default=2.0)
    parser.add_argument("--s3-read-timeout", type=float, default=10.0)
    parser.add_argument("--breaker-threshold", type=int, default=3)
    parser.add_argument("--breaker-cooldown", type=float, default=30.0)
    parser.add_argument("--upload-workers", type=int, default=4)
    parser.add_argument("--upload-queue-size", type=int, default=10000)
    parser.add_argument("--upload-attempts", type=int, default=5)
    parser.add_argument("--stats-interval", type=float, default=60.0)
    parser.add_argument(
        "--drain-timeout", type=float, default=20.0, help="wait for uploads at exit"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-file", help="log here, rotated by size (default: standard error)"
    )
    parser.add_argument(
        "--log-max-bytes",
        type=parse_size,
        default="10M",
        help="rotate the log file at this size",
    )
    parser.add_argument(
        "--log-backups", type=int, default=3, help="rotated log files kept"
    )
    parser.add_argument(
        "--instance-id", default="", help="echoed by /status, for health checks"
    )
    return parser.parse_args(argv)


def configure_logging(args) -> None:
    handler = (
        logging.handlers.RotatingFileHandler(
            args.log_file,
            maxBytes=args.log_max_bytes,
            backupCount=args.log_backups,
        )
        if args.log_file
        else logging.StreamHandler()
    )
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[handler],
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    # botocore's debug logs include request headers; keep them out whatever --log-level says.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    os.makedirs(args.cache_dir, exist_ok=True)
    # One server per cache directory: the lock is held until the process exits.
    lock_file = open(os.path.join(args.cache_dir, "server.lock"), "w")  # noqa: SIM115
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error(
            "another cache server already uses %s: stop it or pick another --cache-dir",
            args.cache_dir,
        )
        return 2
    stats = Stats()
    disk = DiskTier(os.path.join(args.cache_dir, "blobs"), args.disk_limit)
    s3 = uploader = None
    describe_s3 = {"bucket": None}
    if args.bucket:
        breaker = CircuitBreaker(args.breaker_threshold, args.breaker_cooldown)
        s3 = S3Store(args, breaker, stats)
        uploader = Uploader(args.cache_dir, s3, stats, args)
        describe_s3 = {
            "bucket": args.bucket,
            "prefix": s3.prefix,
            "region": args.region or None,
            "endpoint_url": args.endpoint_url or None,
        }
    else:
        log.warning("no S3 bucket configured: serving the disk tier only")
    cache = BlobCache(disk, s3, uploader, stats)
    server = CacheHTTPServer(
        (args.host, args.port), cache, stats, describe_s3, args.instance_id
    )
    port = server.server_address[1]
    if args.port_file:
        temp = f"{args.port_file}.{os.getpid()}"
        with open(temp, "w") as port_file:
            port_file.write(f"{port}\n")
        os.replace(temp, args.port_file)
    threading.Thread(
        target=stats.report_forever, args=(args.stats_interval,), daemon=True
    ).start()

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "serving http://%s:%d (disk limit %s, bucket %s)",
        args.host,
        port,
        human_bytes(args.disk_limit),
        describe_s3["bucket"] or "none",
    )
    server.serve_forever()
    server.server_close()
    if uploader is not None and not uploader.wait_idle(args.drain_timeout):
        log.warning("uploads still pending at exit: they resume at the next start")
