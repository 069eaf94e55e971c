"""Applies the S3 lifecycle rules for the remote-cache, ChromaDB or batch bucket, in one command.

    tools/bazel run //tools/cache:lifecycle -- --bucket NAME --kind cache|chromadb|batch [--dry-run]

Lifecycle rules only delete what the code itself never deletes (see tools/cache/README.md):
- every kind: multipart uploads abandoned by a crash, after --abort-multipart-days (default 1);
- cache: every object under --prefix, --expire-days (default 30) after it was last written.
  S3 lifecycle cannot see reads, so a blob in daily use expires too, and the next build that
  needs it writes it again. The cache server serves an action-cache hit only when every blob
  it references (and every file its output trees list) still exists, so an expired blob costs
  one rebuild of an action, never a broken build.
- chromadb: quarantine records ({collection}/quarantine/), --expire-days (default 90) after
  they were written. Deltas, snapshots and the pointer are the compaction's own retention; an
  expired record makes the next compaction try its delta again (and quarantine it again if it
  is still unreadable).
- batch: request files (embedding-requests/), --expire-days (default 30) after they were
  written; OpenAI finishes or expires a batch within a day of its submission.

Rules whose ID does not start with "repo-lifecycle/" (set by someone else) are kept. The
configuration is read back after writing and compared.
"""

from __future__ import annotations

import argparse
import json
import sys

RULE_ID_PREFIX = "repo-lifecycle/"
DEFAULT_EXPIRE_DAYS = {"cache": 30, "chromadb": 90, "batch": 30}
CHROMADB_COLLECTIONS = ("receipt_lines", "receipt_words")
BATCH_REQUESTS_PREFIX = "embedding-requests/"


class LifecycleError(Exception):
    """The configuration cannot be applied; the message says why and what to do."""


def our_rules(
    kind: str,
    expire_days: int,
    abort_multipart_days: int,
    prefix: str = "bazel-cache",
    collections: tuple[str, ...] = CHROMADB_COLLECTIONS,
) -> list[dict]:
    """The rules this tool manages for a bucket of `kind`."""
    rules = [
        {
            "ID": f"{RULE_ID_PREFIX}abort-incomplete-multipart-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {
                "DaysAfterInitiation": abort_multipart_days
            },
        }
    ]
    if kind == "cache":
        expiring = {"cache-objects": f"{prefix.strip('/')}/" if prefix else ""}
    elif kind == "chromadb":
        expiring = {
            f"{collection}-quarantine-records": f"{collection}/quarantine/"
            for collection in collections
        }
    elif kind == "batch":
        expiring = {"embedding-requests": BATCH_REQUESTS_PREFIX}
    else:
        raise LifecycleError(f"unknown --kind {kind!r}: use cache, chromadb or batch")
    for name, key_prefix in expiring.items():
        rules.append(
            {
                "ID": f"{RULE_ID_PREFIX}expire-{name}",
                "Filter": {"Prefix": key_prefix},
                "Status": "Enabled",
                "Expiration": {"Days": expire_days},
            }
        )
    return rules


def current_rules(client, bucket: str) -> list[dict]:
    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except client.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code == "NoSuchLifecycleConfiguration":
            return []
        if code == "NoSuchBucket":
            raise LifecycleError(
                f"bucket {bucket!r} does not exist: check --bucket (and --endpoint-url)"
            ) from None
        raise LifecycleError(
            f"cannot read the lifecycle configuration of {bucket!r}: {error}"
        ) from None


def merged(existing: list[dict], ours: list[dict]) -> list[dict]:
    """Rules set by others, then ours (replacing the versions of ours already there)."""
    foreign = [
        rule for rule in existing if not rule.get("ID", "").startswith(RULE_ID_PREFIX)
    ]
    return foreign + ours


def apply(client, bucket: str, ours: list[dict], dry_run: bool) -> dict:
    """Writes the merged rules (unless dry_run); returns {"before", "after"}."""
    before = current_rules(client, bucket)
    after = merged(before, ours)
    if dry_run:
        return {"before": before, "after": after}
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": after}
    )
    read_back = {rule["ID"]: rule for rule in current_rules(client, bucket)}
    for rule in ours:
        stored = read_back.get(rule["ID"])
        if stored is None or {key: stored.get(key) for key in rule} != rule:
            raise LifecycleError(
                f"bucket {bucket!r} did not keep rule {rule['ID']}: read back {stored}"
            )
    return {"before": before, "after": after}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument(
        "--kind", required=True, choices=sorted(DEFAULT_EXPIRE_DAYS.keys())
    )
    parser.add_argument(
        "--expire-days",
        type=positive_days,
        help="days after writing (default: cache 30, chromadb 90, batch 30)",
    )
    parser.add_argument("--abort-multipart-days", type=positive_days, default=1)
    parser.add_argument(
        "--prefix", default="bazel-cache", help="cache: BAZEL_CACHE_S3_PREFIX"
    )
    parser.add_argument(
        "--collection",
        action="append",
        help=f"chromadb: a collection (default: {', '.join(CHROMADB_COLLECTIONS)})",
    )
    parser.add_argument("--region", default=None)
    parser.add_argument("--endpoint-url", default=None, help="an S3-compatible store")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the rules, change nothing"
    )
    return parser.parse_args(argv)


def positive_days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days >= 1 (S3 counts lifecycle time in whole days)"
        )
    return int(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    import boto3

    ours = our_rules(
        args.kind,
        args.expire_days or DEFAULT_EXPIRE_DAYS[args.kind],
        args.abort_multipart_days,
        prefix=args.prefix,
        collections=tuple(args.collection or CHROMADB_COLLECTIONS),
    )
    client = boto3.session.Session().client(
        "s3", region_name=args.region, endpoint_url=args.endpoint_url
    )
    try:
        result = apply(client, args.bucket, ours, args.dry_run)
    except LifecycleError as error:
        print(f"lifecycle: {error}", file=sys.stderr)
        return 1
    verb = "would set" if args.dry_run else "set"
    print(
        f"{verb} the lifecycle rules of s3://{args.bucket} ({args.kind}):\n"
        + json.dumps(result["after"], indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
