"""End-to-end check of the S3 remote cache with real Bazel builds; .ci/run runs it outside
`bazel test` (a Bazel inside a Bazel test is impractical).

Two copies of this workspace (so two output bases) share one moto S3 bucket, each through its own
cache server with its own empty disk tier. The first copy builds TARGETS and uploads; the second
builds the same targets and must run no action itself (every spawn a "remote cache hit"), and
every output file must be identical.

    python3 tools/cache/e2e.py [--targets 'kind(lambda_platform_image, //handlers/...)'] [--keep]

TARGETS are patterns or query expressions; by default a few small actions in tests/cache/e2e.

Only the standard library is used here: moto and the cache servers are Bazel-built binaries
started with `tools/bazel run`, so their packages come from the locked @pypi wheels.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ensure_server

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TARGETS = ["//tests/cache/e2e/..."]
BUCKET = "bazel-cache-e2e"
# Spawn kinds in Bazel's "N processes: ..." summary that did not run the action here.
NOT_EXECUTED = {"internal", "remote cache hit"}


def say(message: str) -> None:
    print(f"[cache-e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


class CheckFailed(Exception):
    pass


# --------------------------------------------------------------------------- workspaces


def copy_workspace(destination: Path) -> Path:
    """A copy of this checkout's files (committed and not ignored), outputs and caches left out."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    for name in sorted(set(listing.decode().split("\0")) - {""}):
        if name.split("/")[0].startswith("bazel-") or "__pycache__" in name:
            continue
        source = REPO / name
        target = destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree but not yet in git
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return destination


@dataclass
class BazelRun:
    exit_code: int
    seconds: float
    output: str
    log: Path

    @property
    def processes(self) -> dict[str, int]:
        """Bazel's spawn summary, e.g. {"remote cache hit": 4, "internal": 3}."""
        summaries = re.findall(
            r"^INFO: \d+ process(?:es)?(?:: (.*?))?\.?$", self.output, re.MULTILINE
        )
        if not summaries:
            raise CheckFailed(
                f"no 'INFO: N processes' line in the Bazel output ({self.log})"
            )
        kinds = {}
        for part in filter(None, (summaries[-1] or "").split(", ")):
            count, kind = part.split(" ", 1)
            kinds[kind] = int(count)
        return kinds

    @property
    def executed(self) -> int:
        return sum(n for kind, n in self.processes.items() if kind not in NOT_EXECUTED)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run_bazel(workspace: Path, args: list[str], log: Path) -> BazelRun:
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run(
            [str(workspace / "tools" / "bazel"), *args],
            check=False,
            cwd=workspace,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bazel_environment(),
        ).returncode
    return BazelRun(
        code, time.monotonic() - started, log.read_text(errors="replace"), log
    )


def resolve_targets(targets: list[str]) -> list[str]:
    """Target patterns as given; query expressions (with parentheses) become their labels."""
    resolved = []
    for target in targets:
        if "(" not in target:
            resolved.append(target)
            continue
        listing = subprocess.run(
            [str(REPO / "tools" / "bazel"), "query", "--output=label", target],
            cwd=REPO,
            env=bazel_environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        labels = listing.stdout.split()
        if listing.returncode != 0 or not labels:
            raise CheckFailed(
                f"query {target!r} gave no targets:\n{listing.stderr[-2000:]}"
            )
        resolved += labels
    return resolved


def bazel_environment() -> dict[str, str]:
    """The environment without cache settings: the check points Bazel at its own servers."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BAZEL_CACHE_")}


def isolate_from_user_settings() -> None:
    """Drops the user's cache settings and credentials: only moto is spoken to."""
    for name in [n for n in os.environ if n.startswith(("BAZEL_CACHE_", "AWS_"))]:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="moto",
        AWS_SECRET_ACCESS_KEY="moto",
        AWS_DEFAULT_REGION="us-east-1",
    )


def cache_flags(workspace: Path, url: str | None) -> list[str]:
    """Build flags for a build through the cache server at `url` (None: no cache at all)."""
    flags = ["--color=no", "--curses=no", "--disk_cache="]
    if url is None:
        return [*flags, "--remote_cache="]
    rc = workspace / ".bazelrc"
    if rc.exists() and "build:s3cache" in rc.read_text():
        flags.append(
            "--config=s3cache"
        )  # the repository's settings for this cache, if any
    return [*flags, f"--remote_cache={url}", "--remote_upload_local_results"]


def output_digests(
    workspace: Path, flags: list[str], targets: list[str]
) -> dict[str, str]:
    """sha256 of every file the targets output (recursing into output directories)."""
    # `bazel build PATTERN` skips targets tagged manual; cquery would list their outputs too.
    union = " + ".join(targets)
    expression = f"({union}) except attr(tags, '\\bmanual\\b', {union})"
    run = run_bazel(
        workspace,
        ["cquery", *flags, "--output=files", expression],
        workspace.parent / f"{workspace.name}-cquery.log",
    )
    if run.exit_code != 0:
        raise CheckFailed(f"cquery failed in {workspace}:\n{run.tail()}")
    paths = [line for line in run.output.splitlines() if line.startswith("bazel-out/")]
    digests = {}
    for relative in paths:
        path = workspace / relative
        if not path.exists():
            raise CheckFailed(f"{relative} was built but is not in {workspace}")
        files = (
            sorted(p for p in path.rglob("*") if p.is_file())
            if path.is_dir()
            else [path]
        )
        for file in files:
            digests[str(file.relative_to(workspace))] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    if not digests:
        raise CheckFailed(f"the targets have no output files in {workspace}")
    return digests


def expunge(workspace: Path) -> None:
    """Stops the workspace's Bazel server and deletes its output base."""
    if (workspace / "tools" / "bazel").exists():
        run_bazel(
            workspace,
            ["clean", "--expunge"],
            workspace.parent / f"{workspace.name}-clean.log",
        )


# --------------------------------------------------------------------------- services


class Services:
    """moto's S3 and cache servers, all started with `tools/bazel run` from this checkout."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.endpoint_url = ""
        self._moto = None
        self._caches: dict[str, ensure_server.CacheConfig] = {}

    def __enter__(self):
        isolate_from_user_settings()
        say("building the cache server and moto's S3 (tools/bazel build)")
        prepared = run_bazel(
            REPO,
            ["build", "--color=no", "//tools/cache:server", "//tests/cache:moto_s3"],
            self.workdir / "services-build.log",
        )
        if prepared.exit_code != 0:
            raise CheckFailed(f"building the services failed:\n{prepared.tail()}")
        port_file = self.workdir / "moto.port"
        with open(self.workdir / "moto.log", "w") as log:
            self._moto = subprocess.Popen(
                [
                    *self._bazel_run("//tests/cache:moto_s3"),
                    f"--port-file={port_file}",
                    f"--bucket={BUCKET}",
                ],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=bazel_environment(),
            )
        # `tools/bazel run` waits while another command uses this checkout's Bazel server.
        deadline = time.monotonic() + 600
        while not port_file.exists():
            if self._moto.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "moto.log").read_text(errors="replace")
                raise CheckFailed(f"moto's S3 did not start:\n{log[-3000:]}")
            time.sleep(0.2)
        self.endpoint_url = f"http://127.0.0.1:{int(port_file.read_text())}"
        say(f"moto S3 at {self.endpoint_url}, bucket {BUCKET}")
        return self

    def _bazel_run(self, target: str) -> list[str]:
        return [str(REPO / "tools" / "bazel"), "run", "--color=no", target, "--"]

    def start_cache(self, name: str) -> str:
        config = ensure_server.CacheConfig(
            bucket=BUCKET,
            prefix="cas-e2e",
            region="us-east-1",
            endpoint_url=self.endpoint_url,
            state_dir=self.workdir / f"cache-{name}",
            server_command=tuple(self._bazel_run("//tools/cache:server")),
        )
        with contextlib.chdir(REPO):  # `tools/bazel run` needs to run in the workspace
            url = ensure_server.ensure_server(config, timeout=600)
        self._caches[name] = config
        say(f"cache server {name} at {url} (disk tier {config.server_dir()})")
        return url

    def stop_cache(self, name: str) -> None:
        ensure_server.stop_server(self._caches.pop(name))

    def __exit__(self, *_):
        for name in list(self._caches):
            with contextlib.suppress(Exception):
                self.stop_cache(name)
        if self._moto is not None and self._moto.poll() is None:
            self._moto.send_signal(signal.SIGTERM)
            try:
                self._moto.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._moto.kill()


def cache_status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
        return json.loads(response.read())


def wait_for_uploads(url: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = cache_status(url)
        if status["uploads"]["queued"] == 0 and status["uploads"]["in_flight"] == 0:
            return status
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"uploads still pending after {timeout:.0f}s: {status['uploads']}"
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- the check


def check(workdir: Path, targets: list[str]) -> None:
    builds = {}
    with Services(workdir) as services:
        for name in ("first", "second"):
            workspace = copy_workspace(workdir / name)
            url = services.start_cache(name)
            flags = cache_flags(workspace, url)
            say(f"{name} copy: bazel build {' '.join(targets)}")
            run = run_bazel(
                workspace, ["build", *flags, *targets], workdir / f"{name}-build.log"
            )
            if run.exit_code != 0:
                raise CheckFailed(f"the {name} build failed ({run.log}):\n{run.tail()}")
            status = wait_for_uploads(url)
            digests = output_digests(workspace, flags, targets)
            say(
                f"{name} copy: {run.seconds:.1f}s, processes {run.processes}, "
                f"{len(digests)} output files; cache server: {status['totals']}"
            )
            builds[name] = (run, status, digests)
            services.stop_cache(name)  # the second copy must get everything from S3

    first, first_status, first_digests = builds["first"]
    second, second_status, second_digests = builds["second"]
    if first.executed == 0:
        raise CheckFailed(
            f"the first build executed nothing ({first.processes}): it found a cache already, so "
            "this check would prove nothing"
        )
    if first_status["totals"]["uploads_done"] == 0:
        raise CheckFailed("the first cache server uploaded nothing to S3")
    if second.executed != 0 or second.processes.get("remote cache hit", 0) == 0:
        raise CheckFailed(
            f"the second build executed {second.executed} actions itself "
            f"({second.processes}); expected only remote cache hits ({second.log})"
        )
    if second_status["totals"]["hits_from_s3"] == 0:
        raise CheckFailed("the second cache server served nothing from S3")
    if first_digests != second_digests:
        differing = sorted(
            path
            for path in first_digests.keys() | second_digests.keys()
            if first_digests.get(path) != second_digests.get(path)
        )
        raise CheckFailed(f"outputs differ between the two builds: {differing}")
    say(
        f"PASS: second build ran 0 actions ({second.processes}), {len(second_digests)} identical "
        f"output files, {second_status['totals']['s3_bytes_down']} bytes from S3"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=DEFAULT_TARGETS,
        help="patterns or query expressions",
    )
    parser.add_argument(
        "--workdir", type=Path, help="default: a new temporary directory"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and output bases"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cache-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"work directory {workdir}")
    try:
        check(workdir, resolve_targets(args.targets))
        return 0
    except (CheckFailed, ensure_server.CacheServerError) as error:
        say(f"FAIL: {error}")
        return 1
    finally:
        if not args.keep:
            for name in ("first", "second"):
                expunge(workdir / name)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
