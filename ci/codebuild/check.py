"""Runs ci/codebuild/buildspec.yml as CodeBuild would, twice, each time in a fresh clone of this
repository, against moto and a local registry; .ci/run runs it outside `bazel test` (it runs
Bazel itself).

The phases, their commands and the variables come from the buildspec (parsed by
ci/codebuild/definitions.py), the project's variables from the template; each command runs in
bash in the clone, in order, and the first failing command fails the check. Like a CodeBuild start-build override, the check sets
TEST_TARGETS and IMAGE_TARGETS to a reduced set, and PUSH_ARGS to `--registry-endpoint URL`.

Real: tools/bazel (the build environment already provisioned on this machine, reused), Bazel,
the S3 cache server the launcher starts, the push tool with an ECR registry name (moto's
GetAuthorizationToken and DescribeRepositories for the template's repositories), Debian's
docker-registry requiring the ECR token's password, crane to read the pushed images back.
Stood in: S3 and ECR's API (moto), ECR's registry API (docker-registry, reached through
--registry-endpoint), the CodeBuild role (moto credentials), CodeBuild's S3 cache of the
repository cache (this machine's repository cache is shared by both runs).

Asserts: no new build environment is provisioned; tests pass; the images are pushed; the
artifact push-references.json names, for every image, the digest the registry holds under the
commit tag; the first run executed actions and the second (fresh clone, output base and cache
disk tier, warm S3) executed none, its results coming from S3.

    python3 ci/codebuild/check.py [--tests //tools/pypi:lock_test] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "cache"))
sys.path.insert(0, str(REPO / "tools" / "buildenv"))
# The S3 cache check's helpers: Bazel runs and their spawn summaries, cache server status.
import e2e
import ensure_server
import launcher

BUCKET = "ci-buildspec-check"
DEFAULT_TESTS = "//tools/pypi:lock_test"
DEFAULT_IMAGES = "//handlers/submit_to_openai:image"
COMMAND_TIMEOUT = 1800
SUMMARY = re.compile(r"^INFO: \d+ process", re.MULTILINE)
# Bazel's per-test summary lines, as .ci/run reads them.
TEST_PASSED = re.compile(r"^//\S+ +(\(cached\) )?PASSED", re.MULTILINE)
TEST_FAILED = re.compile(
    r"^//\S+ +(\(cached\) )?(FAILED|NO STATUS|TIMEOUT|FLAKY|INCOMPLETE)", re.MULTILINE
)
CheckFailed = e2e.CheckFailed


def say(message: str) -> None:
    print(f"[buildspec-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def clone(destination: Path) -> str:
    """A git clone of this work tree's HEAD (CodeBuild checks out a commit); returns the commit."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(destination)],
        check=True,
    )
    return subprocess.run(
        ["git", "-C", str(destination), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def provisioned_environments() -> list[str]:
    directory = launcher.cache_root() / "buildenv"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def bazel_run_command(target: str) -> list[str]:
    return [str(REPO / "tools" / "bazel"), "run", "--color=no", target, "--"]


class Services:
    """moto and the registry (ci/codebuild/services.py), started with `tools/bazel run`."""

    def __init__(self, workdir: Path, definitions: Path):
        self.workdir = workdir
        self.definitions = definitions
        self.process = None

    def __enter__(self) -> dict:
        state_file = self.workdir / "services.json"
        log_path = self.workdir / "services.log"
        say("starting moto (S3, ECR) and docker-registry (tools/bazel run)")
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [
                    *bazel_run_command("//ci/codebuild:services"),
                    f"--state-file={state_file}",
                    f"--workdir={self.workdir / 'registry'}",
                    f"--bucket={BUCKET}",
                    f"--definitions={self.definitions}",
                ],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=e2e.bazel_environment(),
            )
        # `tools/bazel run` first builds, and waits while another command uses this server.
        deadline = time.monotonic() + 900
        while not state_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(
                    "the services did not start (waited for "
                    f"{state_file}):\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.2)
        state = json.loads(state_file.read_text())
        say(
            f"moto at {state['moto_endpoint']}, registry at {state['registry_endpoint']} "
            f"standing in for {state['ecr_registry']}"
        )
        return state

    def __exit__(self, *_):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=60)


def codebuild_environment(
    state: dict, workdir: Path, name: str, commit: str, overrides: dict[str, str]
) -> dict[str, str]:
    """The variables a CodeBuild build of `commit` on main would see, AWS pointed at moto."""
    project_values = {
        "BAZEL_CACHE_S3_BUCKET": state["bucket"],
        "BAZEL_CACHE_S3_REGION": state["region"],
        "ECR_REGISTRY": state["ecr_registry"],
    }
    unknown = set(state["template"]["project_variables"]) - set(project_values)
    if unknown:
        raise CheckFailed(
            f"the template's build project sets {sorted(unknown)}; teach this check a "
            "stand-in value for them"
        )
    env = dict(os.environ)  # after e2e.isolate_from_user_settings: moto's credentials
    # Lowest precedence, as in CodeBuild. XDG_CACHE_HOME stays this user's: the build
    # environment provisioned here is reused (check_repository_cache maps the CI path).
    env.update(
        {
            k: v
            for k, v in state["buildspec"]["variables"].items()
            if k != "XDG_CACHE_HOME"
        }
    )
    env.update({k: project_values[k] for k in state["template"]["project_variables"]})
    env.update(overrides)  # start-build overrides
    # The one change to the buildspec's own push: moto has ECR's API but not its registry API.
    env["PUSH_ARGS"] = f"--registry-endpoint {state['registry_endpoint']}"
    env.update(
        CODEBUILD_BUILD_ID=f"receipt-lambdas:check-{name}",
        CODEBUILD_SOURCE_VERSION=commit,
        CODEBUILD_WEBHOOK_HEAD_REF="refs/heads/main",
        AWS_REGION=state["region"],
        AWS_DEFAULT_REGION=state["region"],
        AWS_ENDPOINT_URL=state["moto_endpoint"],
        BAZEL_CACHE_S3_ENDPOINT_URL=state["moto_endpoint"],
        # A fresh machine each run: the cache server's disk tier starts empty.
        BAZEL_CACHE_DIR=str(workdir / f"cache-server-{name}"),
    )
    return env


def run_buildspec(
    buildspec: dict, source: Path, env: dict[str, str], log: Path
) -> list[e2e.BazelRun]:
    """Runs the phases' commands in order; one BazelRun (output, exit code) per command."""
    runs = []
    for phase in buildspec["phases"]:
        for number, command in enumerate(phase["commands"]):
            say(f"{phase['name']}: {command.strip().splitlines()[0]}")
            command_log = log.with_name(f"{log.stem}-{phase['name']}-{number}.log")
            started = time.monotonic()
            with open(command_log, "w") as out:
                code = subprocess.run(
                    ["bash", "-c", command],
                    cwd=source,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=COMMAND_TIMEOUT,
                    check=False,
                ).returncode
            output = command_log.read_text(errors="replace")
            runs.append(
                e2e.BazelRun(code, time.monotonic() - started, output, command_log)
            )
            if code != 0:
                raise CheckFailed(
                    f"phase {phase['name']} failed ({command_log}):\n{runs[-1].tail()}"
                )
    return runs


def bazel_summaries(runs: list[e2e.BazelRun]) -> list[e2e.BazelRun]:
    """The commands that ran a Bazel build (they print an 'INFO: N processes' summary)."""
    return [run for run in runs if SUMMARY.search(run.output)]


def artifact_file(buildspec: dict, source: Path, name: str) -> Path:
    """`name` among the files the buildspec's artifacts section would upload."""
    base = source / buildspec["artifacts"]["base_directory"]
    uploaded = {
        path.relative_to(base).as_posix(): path
        for pattern in buildspec["artifacts"]["files"]
        for path in base.glob(pattern)
        if path.is_file()
    }
    if name not in uploaded:
        raise CheckFailed(f"the artifacts ({sorted(uploaded)}) do not include {name}")
    return uploaded[name]


def check_references(state: dict, references_file: Path, commit: str) -> dict:
    """The references name every repository of the template, in the ECR registry, and the
    registry holds each digest under the commit tag (read back with crane)."""
    images = json.loads(references_file.read_text())["images"]
    repositories = sorted(info["repository"] for info in images.values())
    if repositories != state["template"]["repositories"]:
        raise CheckFailed(
            f"pushed repositories {repositories} are not the template's "
            f"{state['template']['repositories']}"
        )
    for name, info in images.items():
        expected = f"{state['ecr_registry']}/{info['repository']}@{info['digest']}"
        if info["reference"] != expected or commit not in info["tags"]:
            raise CheckFailed(
                f"{name}: reference {info['reference']} tags {info['tags']}, expected "
                f"{expected} tagged {commit}"
            )
    listing = subprocess.run(
        [
            *bazel_run_command("//ci/codebuild:registry_digests"),
            f"--references={references_file}",
            f"--endpoint={state['registry_endpoint']}",
            f"--username={state['registry_user']}",
            f"--password={state['registry_password']}",
        ],
        cwd=REPO,
        env=e2e.bazel_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if listing.returncode != 0:
        raise CheckFailed(f"reading the registry failed:\n{listing.stderr[-3000:]}")
    found = json.loads(listing.stdout)
    for name, info in images.items():
        held = found[name]
        if held["by_digest"] != info["digest"] or set(held["tags"].values()) != {
            info["digest"]
        }:
            raise CheckFailed(
                f"{name}: the registry holds {held}, references say {info['digest']}"
            )
    return {name: info["digest"] for name, info in images.items()}


def check_run(
    name: str, state: dict, source: Path, commit: str, env: dict, workdir: Path
) -> dict:
    buildspec = state["buildspec"]
    runs = run_buildspec(buildspec, source, env, workdir / f"{name}.log")
    if any("provisioning" in run.output for run in runs):
        raise CheckFailed(f"the {name} run provisioned a build environment")
    output = "".join(run.output for run in runs)
    passed = TEST_PASSED.findall(output)
    if not passed or TEST_FAILED.search(output):
        raise CheckFailed(f"the {name} run's tests did not pass:\n{runs[-1].tail()}")
    builds = bazel_summaries(runs)
    executed = sum(run.executed for run in builds)
    cache_hits = sum(run.processes.get("remote cache hit", 0) for run in builds)
    references = artifact_file(buildspec, source, "push-references.json")
    digests = check_references(state, references, commit)
    config = ensure_server.load_config(env)
    url = ensure_server.running_server_url(config)
    if url is None:
        raise CheckFailed(f"the {name} run did not leave its S3 cache server running")
    cache = e2e.wait_for_uploads(url)["totals"]
    ensure_server.stop_server(config)  # the next run must get everything from S3
    say(
        f"{name} run: {len(passed)} tests passed, {executed} actions executed, {cache_hits} "
        f"remote cache hits, {len(digests)} images pushed and verified; cache server {cache}"
    )
    return {"executed": executed, "digests": digests, "cache": cache}


def check_repository_cache(buildspec: dict) -> None:
    """The buildspec caches the launcher's repository cache: under the buildspec's
    XDG_CACHE_HOME in CodeBuild, under this user's cache directory here."""
    expected = launcher.cache_root() / "repository-cache"
    ci_cache = buildspec["variables"]["XDG_CACHE_HOME"].rstrip("/")
    paths = [
        launcher.cache_root().parent
        / p.removeprefix(ci_cache + "/").removesuffix("/**/*")
        for p in buildspec["cache_paths"]
    ]
    if expected not in paths or not any(expected.iterdir()):
        raise CheckFailed(
            f"the buildspec caches {paths}, not the repository cache {expected} "
            "(or that is empty)"
        )


def check(workdir: Path, overrides: dict[str, str], keep: bool) -> None:
    environments = provisioned_environments()
    if not environments:
        raise CheckFailed("no build environment yet: run tools/bazel once first")
    e2e.isolate_from_user_settings()
    sources = {name: workdir / f"clone-{name}" for name in ("first", "second")}
    commits = {name: clone(source) for name, source in sources.items()}
    results = {}
    with Services(workdir, sources["first"]) as state:
        check_repository_cache(state["buildspec"])
        for name, source in sources.items():
            env = codebuild_environment(state, workdir, name, commits[name], overrides)
            say(f"{name} run in {source} (commit {commits[name][:12]})")
            try:
                results[name] = check_run(
                    name, state, source, commits[name], env, workdir
                )
            finally:  # the launcher leaves the cache server running; a failed run too
                with contextlib.suppress(ensure_server.CacheServerError):
                    ensure_server.stop_server(ensure_server.load_config(env))
                if not keep:  # an output base is a few GB: one at a time
                    e2e.expunge(source)
                    shutil.rmtree(source, ignore_errors=True)
    if provisioned_environments() != environments:
        raise CheckFailed(
            f"build environments before {environments}, after {provisioned_environments()}"
        )
    first, second = results["first"], results["second"]
    if first["executed"] == 0:
        raise CheckFailed(
            "the first run executed nothing: the S3 cache was warm already, so the second "
            "run would prove nothing"
        )
    if second["executed"] != 0 or second["cache"]["hits_from_s3"] == 0:
        raise CheckFailed(
            f"the second run executed {second['executed']} actions and had "
            f"{second['cache']['hits_from_s3']} hits from S3; expected 0 and some"
        )
    if first["digests"] != second["digests"]:
        raise CheckFailed(f"digests differ: {first['digests']} {second['digests']}")
    say(
        f"PASS: {len(second['digests'])} images pushed by digest; the second run executed no "
        f"action ({second['cache']['hits_from_s3']} hits from S3); no new build environment"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tests", default=DEFAULT_TESTS, help="TEST_TARGETS")
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="IMAGE_TARGETS")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary dir")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and output bases"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="buildspec-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"work directory {workdir}")
    try:
        check(
            workdir,
            {"TEST_TARGETS": args.tests, "IMAGE_TARGETS": args.images},
            args.keep,
        )
        return 0
    except (CheckFailed, ensure_server.CacheServerError) as error:
        say(f"FAIL: {error}")
        return 1
    finally:
        if not args.keep:
            for name in ("first", "second"):
                e2e.expunge(workdir / f"clone-{name}")
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
