"""Thread-safe counters for /status and the per-interval summary log line."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("s3cache")


class Stats:
    """Thread-safe counters; the reporter thread turns them into per-minute log lines."""

    NAMES = (
        "ac_hits",
        "ac_misses",
        "cas_hits",
        "cas_misses",
        "hits_from_s3",
        "puts",
        "rejected_puts",
        "bytes_in",
        "bytes_out",
        "s3_bytes_down",
        "s3_bytes_up",
        "s3_errors",
        "integrity_deletes",
        "uploads_done",
        "uploads_failed",
        "uploads_dropped",
        # Lookups by tier: a disk miss goes on to S3 (when there is a bucket).
        *(
            f"{kind}_{tier}_{outcome}"
            for kind in ("ac", "cas")
            for tier in ("disk", "s3")
            for outcome in ("hits", "misses")
        ),
    )

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)
        self.last_minute = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def hit_rates(self) -> dict:
        """Hits, misses and hit rate per kind, overall (what clients got) and per tier."""
        counts = self.snapshot()

        def rate(hits: int, misses: int) -> dict:
            total = hits + misses
            return {
                "hits": hits,
                "misses": misses,
                "hit_rate": round(hits / total, 4) if total else None,
            }

        return {
            kind: {
                "served": rate(counts[f"{kind}_hits"], counts[f"{kind}_misses"]),
                **{
                    tier: rate(
                        counts[f"{kind}_{tier}_hits"], counts[f"{kind}_{tier}_misses"]
                    )
                    for tier in ("disk", "s3")
                },
            }
            for kind in ("ac", "cas")
        }

    def report_forever(self, interval: float) -> None:
        previous = self.snapshot()
        while True:
            time.sleep(interval)
            current = self.snapshot()
            delta = {name: current[name] - previous[name] for name in self.NAMES}
            self.last_minute, previous = delta, current
            if any(delta.values()):
                log.info(
                    "last %ds: hits %d (ac %d, cas %d, from s3 %d), misses %d (ac %d, cas %d), "
                    "in %s, out %s, s3 down %s, up %s, s3 errors %d, uploads %d done/%d failed/%d "
                    "dropped, rejected puts %d, integrity deletes %d",
                    interval,
                    delta["ac_hits"] + delta["cas_hits"],
                    delta["ac_hits"],
                    delta["cas_hits"],
                    delta["hits_from_s3"],
                    delta["ac_misses"] + delta["cas_misses"],
                    delta["ac_misses"],
                    delta["cas_misses"],
                    human_bytes(delta["bytes_in"]),
                    human_bytes(delta["bytes_out"]),
                    human_bytes(delta["s3_bytes_down"]),
                    human_bytes(delta["s3_bytes_up"]),
                    delta["s3_errors"],
                    delta["uploads_done"],
                    delta["uploads_failed"],
                    delta["uploads_dropped"],
                    delta["rejected_puts"],
                    delta["integrity_deletes"],
                )


def human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
