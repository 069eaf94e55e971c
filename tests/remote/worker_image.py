"""The worker image (//tools/buildenv/worker:image) running real actions of this repository.

Builds the image with the repository's own rules, unpacks its layers into a root file system,
starts its entrypoint there as a container runtime would (the image config's Env, WorkingDir and
Entrypoint, a cleared environment, chroot in a private mount namespace) against a running
cluster's BuildGrid, and builds targets with `BAZEL_REMOTE_BUILDENV` set to the image's buildenv
hash, so that every action lands on that worker and nowhere else. The digests must equal the
local build's.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shlex
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Self

from steps import (
    REMOTE_FLAGS,
    STATE,
    CheckFailed,
    cluster,
    compare,
    e2e,
    image_digests,
    output_files,
    remote_build,
    say,
)

IMAGE = "//tools/buildenv/worker:image"
BUILDENV = "//tools/buildenv/worker:buildenv"
WORKER_NAME = "image-worker"
REGISTER_TIMEOUT = 120  # seconds for the worker to open its bot session
STOP_TIMEOUT = 30


def build_image(scratch: Path) -> tuple[Path, str]:
    """The image's OCI layout directory and its buildenv hash."""
    log = scratch / "worker-image-build.log"
    started = time.monotonic()
    run = e2e.run_bazel(
        e2e.REPO, ["build", "--color=no", f"{IMAGE}.layout", BUILDENV], log
    )
    if run.exit_code != 0:
        raise CheckFailed(f"building the worker image failed ({log}):\n{run.tail()}")
    outputs = output_files([], ["--color=no"], f"{IMAGE}.layout + {BUILDENV}", log)
    layout = next(path for path in outputs if path.name == "layout")
    buildenv = next(path for path in outputs if path.name == "buildenv.txt")
    say(f"worker image built in {time.monotonic() - started:.0f} s ({layout})")
    return layout, buildenv.read_text().strip()


def blob(layout: Path, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hex_digest


def unpack(layout: Path, root: Path) -> dict:
    """Extracts the image's layers in order into `root`; returns the image config."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(layout, manifest["config"]["digest"]).read_text())
    root.mkdir(parents=True)
    for layer in manifest["layers"]:
        if not layer["mediaType"].endswith("tar+gzip"):
            raise CheckFailed(f"unexpected layer media type {layer['mediaType']}")
        with (
            gzip.open(blob(layout, layer["digest"])) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            tar.extractall(root, filter="tar")
    for mount_point in ("proc", "dev"):  # a container runtime mounts these
        (root / mount_point).mkdir(exist_ok=True)
    return config


class ImageWorker:
    """The image's entrypoint running against BuildGrid at `url`, until stopped."""

    def __init__(self, root: Path, config: dict, url: str, log: Path):
        self.root, self.log = root.resolve(), log
        settings = config["config"]
        environment = [
            *settings.get("Env", []),
            f"BUILDGRID_URL={url}",
            f"WORKER_NAME={WORKER_NAME}",
        ]
        quoted_root = shlex.quote(str(self.root))
        command = ["env", "-i", *environment, *settings["Entrypoint"]]
        self.script = "\n".join(
            [
                "set -e",
                f"mount --rbind /proc {quoted_root}/proc",
                f"mount --rbind /dev {quoted_root}/dev",
                f"cd {quoted_root}",
                f"exec chroot {quoted_root} sh -c "
                + shlex.quote(
                    f"cd {shlex.quote(settings.get('WorkingDir') or '/')} && exec "
                    + shlex.join(command)
                ),
            ]
        )
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    self.script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        state = cluster.running_state(STATE)
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while not any(
            row[0] == WORKER_NAME for row in cluster.query(state, cluster.BOTS_QUERY)
        ):
            if self.process.poll() is not None:
                raise CheckFailed(
                    f"the image's worker exited ({self.process.returncode}) before it "
                    f"registered with BuildGrid; see {self.log}"
                )
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"the image's worker did not register with BuildGrid within "
                    f"{REGISTER_TIMEOUT} s; see {self.log}"
                )
            time.sleep(0.5)
        say(f"the image's worker runs (pid {self.process.pid}) and has a bot session")
        return self

    def __exit__(self, *_) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        left = cluster.processes_in(str(self.root))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            raise CheckFailed(f"processes of the image's worker outlived it: {left}")


@contextlib.contextmanager
def remote_environment(buildenv: str):
    """tools/bazel sends actions to the running cluster, for workers offering `buildenv`."""
    state = cluster.running_state(STATE)
    names = ("BAZEL_REMOTE", cluster.BUILDENV_VARIABLE)
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict(zip(names, (state["executor"], buildenv))))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check(scratch: Path, targets: list[str], digests_of: str, tests: list[str]) -> str:
    """Builds `targets` and runs `tests` on the image's worker only; the images among the outputs
    of `digests_of` must have the local build's digests. Returns the image's buildenv hash."""
    layout, buildenv = build_image(scratch)
    local_log = scratch / "worker-image-local.log"
    local = e2e.run_bazel(e2e.REPO, ["build", "--color=no", *targets], local_log)
    if local.exit_code != 0:
        raise CheckFailed(f"the local build failed ({local_log}):\n{local.tail()}")
    local_digests = image_digests([], ["--color=no"], digests_of, local_log)
    root = scratch / "worker-image-root"
    started = time.monotonic()
    config = unpack(layout, root)
    say(f"unpacked the image into {root} in {time.monotonic() - started:.0f} s")
    state = cluster.running_state(STATE)
    url = state["executor"].replace("grpc://", "http://")
    startup = [f"--output_base={scratch / 'output_base_worker_image'}"]
    worker_log = scratch / "image-worker.log"
    with remote_environment(buildenv):
        with ImageWorker(root, config, url, worker_log):
            executed = remote_build(
                startup, "build", targets, scratch / "worker-image-build-remote.log"
            ).processes["remote"]
            remote = image_digests(
                startup, REMOTE_FLAGS, digests_of, scratch / "worker-image-cquery.log"
            )
            compare(
                local_digests,
                remote,
                f"built by the image's worker (buildenv={buildenv})",
            )
            if tests:
                executed += remote_build(
                    startup, "test", tests, scratch / "worker-image-test.log"
                ).processes["remote"]
        # buildbox logs each action it ran; all of them must have run on this worker.
        ran_here = worker_log.read_text(errors="replace").count(
            "Runner exited with code"
        )
        if ran_here < executed:
            raise CheckFailed(
                f"{executed} actions ran remotely but the image's worker ran {ran_here} "
                f"({worker_log})"
            )
        e2e.run_bazel(e2e.REPO, [*startup, "shutdown"], scratch / "shutdown.log")
    say("the image's worker stopped, no process left in its root")
    return buildenv
