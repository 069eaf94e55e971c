"""The push tool's command line: where the registry comes from, config files, default tags,
the embedded local registry, help and usage errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.push import support
from tools.registry.local_registry import answers

HANDLERS = support.HANDLERS


def test_registry_from_flag_then_environment_then_config_file(
    images, run_push, tmp_path, monkeypatch
):
    image = images.build("similarity")
    with (
        support.registry(tmp_path / "a") as from_config,
        support.registry(tmp_path / "b") as from_environment,
        support.registry(tmp_path / "c") as from_flag,
    ):
        config = tmp_path / "push.toml"
        config.write_text(
            f'registry = "{from_config.address}"\nrepository_prefix = "team/"\n'
        )
        base = [
            "--config",
            str(config),
            f"--image=similarity={image.layout}",
            "--dry-run",
        ]
        assert run_push(*base).results[0].repository == "team/similarity"
        assert from_config.address in run_push(*base).stdout
        monkeypatch.setenv("PUSH_REGISTRY", from_environment.address)
        monkeypatch.setenv("PUSH_REPOSITORY_PREFIX", "env/")
        run = run_push(*base)
        assert (
            from_environment.address in run.stdout
            and run.results[0].repository == "env/similarity"
        )
        run = run_push(
            *base, "--registry", from_flag.address, "--repository", "flag/repo"
        )
        assert f"{from_flag.address}/flag/repo@" in run.stdout


def test_bad_config_file_is_a_clear_error(images, run_push, tmp_path):
    config = tmp_path / "push.toml"
    config.write_text('registy = "typo.example.com"\n')
    run = run_push(
        "--config", str(config), f"--image=x={images.build('similarity').layout}"
    )
    assert run.code == 2 and "unknown key 'registy'" in run.stderr


def test_default_tag_is_the_git_commit_of_a_clean_tree(
    open_registry, images, run_push, tmp_path
):
    workspace = tmp_path
    git = [
        "git",
        "-C",
        str(workspace),
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
    ]
    subprocess.run([*git, "init", "-q"], check=True)
    (workspace / "handler.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "handler.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "initial"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    image = images.build("similarity")
    args = ["--registry", open_registry.address, f"--image=similarity={image.layout}"]

    clean = run_push(*args, "--latest")
    assert clean.results[0].tags == [commit, "latest"]
    assert open_registry.client().manifest_digest("similarity", commit) == image.digest

    (workspace / "handler.py").write_text("x = 2\n")
    dirty = run_push(*args)
    assert dirty.results[0].tags == [] and "uncommitted changes" in dirty.stdout


def test_embedded_local_registry_when_nothing_is_configured(images, run_push, tmp_path):
    storage = tmp_path / "cache" / "local-registry"
    # Port 0: the registry binds a port the kernel picks, so no other test can hold it first.
    local = ["--local-registry-dir", str(storage), "--local-registry-port", "0"]
    image = images.build("embed_words")
    try:
        run = run_push(*local, f"--image=embed_words={image.layout}")
        assert run.code == 0, run.stderr
        announced = re.search(
            r"No registry configured: pushing to the local registry at http://127\.0\.0\.1:(\d+) ",
            run.stdout,
        )
        assert announced, run.stdout
        port = int(announced.group(1))
        assert "--registry <account>.dkr.ecr.<region>.amazonaws.com" in run.stdout
        assert answers(port)  # left running, so the image can be pulled
        assert (
            storage
            / "storage"
            / "docker"
            / "registry"
            / "v2"
            / "repositories"
            / "embed_words"
        ).is_dir()
        again = run_push(*local, f"--image=embed_words={image.layout}")
        assert f"http://127.0.0.1:{port} (already running" in again.stdout
        assert again.results[0].uploaded == 0
    finally:
        stopped = run_push(*local, "--stop-local-registry")
    assert "local registry stopped" in stopped.stdout
    assert not answers(port), "--stop-local-registry returns once the server is gone"


def test_cli_help_documents_the_options_and_errors_exit_2_without_traceback(tmp_path):
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    command = [sys.executable, "-m", "tools.push.push"]
    shown = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert shown.returncode == 0
    for option in (
        "--registry",
        "--repository",
        "--create-repositories",
        "--dry-run",
        "--tag",
        "--output-json",
    ):
        assert option in shown.stdout
    assert "PUSH_REGISTRY" in shown.stdout and "get_authorization_token" in shown.stdout
    failed = subprocess.run(
        [*command, "--registry", "bad host", f"--image=x={tmp_path}"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert (
        failed.returncode == 2
        and failed.stderr.startswith("push: error: ")
        and "Traceback" not in failed.stderr
    )
