"""Reads the build event protocol's JSON form (`--build_event_json_file`, one event per line)
into a BuildSummary: the figures the history keeps for one Bazel command.

Field names are the ones Bazel 7.7.1 writes (see testdata/README.md for the commands that made
the fixtures). Only the standard library: the launcher runs this on the host's python3.
"""

import base64
import json
import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

# runnerCount names that are not actions a user waits for: "total" sums the others and
# "internal" counts Bazel's own bookkeeping (symlink trees, file writes).
NOT_ACTIONS = ("total", "internal")
# The flag that picks the Lambda images' platform (platforms/BUILD.bazel) and its default.
PLATFORM_FLAG = re.compile(r"^--(?:@@?)?//platforms:lambda=(.+)$")
DEFAULT_CONFIGURATION = "arm64"
CRITICAL_PATH = re.compile(r"Critical Path: ([0-9.]+)s")
# A build is cold when at least this share of the actions Bazel checked had never run in this
# output base (action cache miss reason NOT_CACHED).
COLD_SHARE = 0.5


class BepError(Exception):
    """The file is not a complete build event stream."""


# NamedTuples rather than dataclasses: this module runs after every build, and importing
# dataclasses costs more than parsing a no-op build's events.
class ImageOutput(NamedTuple):
    label: str
    manifest: Path  # config.json and, when built, layout/ are its siblings


class BuildSummary(NamedTuple):
    invocation_id: str
    started_at: float  # seconds since the epoch
    command: str
    patterns: list[str]
    configuration: str  # arm64 or amd64: the platform of the Lambda images
    success: bool
    exit_code: (
        str  # Bazel's exit code name: SUCCESS, BUILD_FAILURE, PARSING_FAILURE, ...
    )
    wall_seconds: float
    critical_path_seconds: float | None
    remote_cache_hits: int = 0
    disk_cache_hits: int = 0
    local_actions: int = 0  # sandboxed, local or worker spawns
    remote_actions: int = 0  # remote execution
    action_cache_checked: int = 0
    action_cache_not_cached: int = 0
    tests_passed: int = 0
    tests_failed: int = 0
    images: tuple[ImageOutput, ...] = ()

    @property
    def cached(self) -> int:
        return self.remote_cache_hits + self.disk_cache_hits

    @property
    def run(self) -> int:
        return self.local_actions + self.remote_actions

    @property
    def actions(self) -> int:
        return self.cached + self.run

    @property
    def cache_hit_rate(self) -> float | None:
        """Cached actions / all actions, in percent; None when no action ran or was fetched."""
        return 100.0 * self.cached / self.actions if self.actions else None

    @property
    def kind(self) -> str:
        """no-op: nothing ran or came from a cache; cold: most actions Bazel checked had never
        run in this output base (fresh clone, `bazel clean`, new configuration); else
        incremental."""
        if not self.actions:
            return "no-op"
        if (
            self.action_cache_checked
            and self.action_cache_not_cached >= COLD_SHARE * self.action_cache_checked
        ):
            return "cold"
        return "incremental"

    def summary_line(self) -> str:
        rate = self.cache_hit_rate
        return (
            f"{self.actions} actions ({self.cached} cached, {self.run} run) in "
            f"{self.wall_seconds:.1f} s, cache hit rate "
            + (f"{rate:.0f}%" if rate is not None else "n/a (nothing to build)")
        )


def _events(path: Path):
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise BepError(
                    f"{path}:{number}: not a JSON build event ({error.msg}); "
                    "was the file written with --build_event_json_file?"
                ) from None


def _file_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def configuration_of(options: list[str]) -> str:
    """arm64 or amd64 from the command's canonical options (the last --//platforms:lambda
    wins)."""
    configuration = DEFAULT_CONFIGURATION
    for option in options:
        match = PLATFORM_FLAG.match(option)
        if match:
            target = match.group(1)
            configuration = "amd64" if target.endswith("amd64") else "arm64"
    return configuration


def parse(path: Path) -> BuildSummary:
    """The summary of the command whose events `path` holds."""
    started = finished = metrics = None
    patterns: list[str] = []
    options: list[str] = []
    critical_path = None
    tests_passed = tests_failed = 0
    images: list[ImageOutput] = []
    for event in _events(path):
        kind = next(iter(event.get("id", {})), None)
        if kind == "started":
            started = event["started"]
        elif kind == "pattern":
            patterns += event["id"]["pattern"].get("pattern", [])
        elif kind == "structuredCommandLine":
            # The canonical form has --config=NAME expanded into the options it stands for.
            line = event["structuredCommandLine"]
            if line.get("commandLineLabel") == "canonical":
                options = [
                    option.get("combinedForm", "")
                    for section in line.get("sections", [])
                    if section.get("sectionLabel") == "command options"
                    for option in section.get("optionList", {}).get("option", [])
                ]
        elif kind == "buildFinished":
            finished = event["finished"]
        elif kind == "buildMetrics":
            metrics = event["buildMetrics"]
        elif kind == "testSummary":
            status = event["testSummary"].get("overallStatus", "")
            if status == "PASSED":
                tests_passed += 1
            else:
                tests_failed += 1
        elif kind == "buildToolLogs":
            for log in event["buildToolLogs"].get("log", []):
                if log.get("name") == "critical path" and "contents" in log:
                    text = base64.b64decode(log["contents"]).decode(errors="replace")
                    match = CRITICAL_PATH.search(text)
                    if match:
                        critical_path = float(match.group(1))
        elif kind == "targetCompleted":
            label = event["id"]["targetCompleted"]["label"]
            for output in event.get("completed", {}).get("importantOutput", []):
                manifest = _file_path(output.get("uri", ""))
                if output["name"].endswith("/manifest.json") and manifest:
                    images.append(ImageOutput(label, manifest))
    if started is None or finished is None:
        missing = "started" if started is None else "buildFinished"
        raise BepError(
            f"{path} has no {missing} event: the command did not finish writing its events"
        )
    metrics = metrics or {}
    timing = metrics.get("timingMetrics", {})
    start_ms = int(started["startTimeMillis"])
    wall_ms = int(
        timing.get("wallTimeInMs", int(finished["finishTimeMillis"]) - start_ms)
    )
    exit_code = finished.get("exitCode", {}).get("name", "SUCCESS")
    actions = metrics.get("actionSummary", {})
    runners = {"remote cache hit": 0, "disk cache hit": 0, "Remote": 0, "local": 0}
    for runner in actions.get("runnerCount", []):
        name, count = runner.get("name", ""), int(runner.get("count", 0))
        if name in NOT_ACTIONS:
            continue
        if name in ("remote cache hit", "disk cache hit"):
            runners[name] += count
        elif runner.get("execKind") == "Remote":
            runners["Remote"] += count
        else:
            runners["local"] += count
    cache = actions.get("actionCacheStatistics", {})
    return BuildSummary(
        invocation_id=started["uuid"],
        started_at=start_ms / 1000,
        command=started["command"],
        patterns=patterns,
        configuration=configuration_of(options),
        success=bool(finished.get("overallSuccess")) and exit_code == "SUCCESS",
        exit_code=exit_code,
        wall_seconds=wall_ms / 1000,
        critical_path_seconds=critical_path,
        remote_cache_hits=runners["remote cache hit"],
        disk_cache_hits=runners["disk cache hit"],
        local_actions=runners["local"],
        remote_actions=runners["Remote"],
        action_cache_checked=int(cache.get("hits", 0)) + int(cache.get("misses", 0)),
        action_cache_not_cached=sum(
            int(detail.get("count", 0))
            for detail in cache.get("missDetails", [])
            if detail.get("reason") == "NOT_CACHED"
        ),
        tests_passed=tests_passed,
        tests_failed=tests_failed,
        images=tuple(images),
    )
