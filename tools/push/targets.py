"""What to push where: the images of the Bazel targets, repositories, config file, tags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tomllib
from pathlib import Path

from tools.push.options import CONFIG_KEYS, ENV_REPOSITORY_PREFIX, UsageError
from tools.registry import client


@dataclasses.dataclass
class Target:
    name: str
    layout: Path
    repository: str = ""
    tags: tuple[str, ...] = ()


# --------------------------------------------------------------------------- configuration


def load_config(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None
    for key, value in config.items():
        if key not in CONFIG_KEYS:
            raise UsageError(
                f"config file {path}: unknown key {key!r}; known keys: {', '.join(CONFIG_KEYS)}"
            )
        if not isinstance(value, CONFIG_KEYS[key]):
            raise UsageError(
                f"config file {path}: {key} must be a {CONFIG_KEYS[key].__name__}"
            )
    return config


def user_path(path: Path) -> Path:
    """Relative paths on the command line are relative to where `bazel run` was started."""
    return Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / path


def runfiles_path(rlocation: str) -> Path:
    root = os.environ.get("RUNFILES_DIR")
    return Path(root) / rlocation if root else Path(rlocation)


def load_targets(args: argparse.Namespace) -> list[Target]:
    targets = []
    if args.targets:
        for entry in json.loads(args.targets.read_text()):
            targets.append(
                Target(
                    entry["name"],
                    runfiles_path(entry["layout"]),
                    entry.get("repository", ""),
                    tuple(entry.get("tags", ())),
                )
            )
    for spec in args.image:
        name, separator, path = spec.partition("=")
        if not separator or not name or not path:
            raise UsageError(f"--image {spec!r}: expected NAME=LAYOUT_DIR")
        targets.append(Target(name, user_path(Path(path))))
    if not targets:
        raise UsageError(
            "no images to push; run a Bazel push target or pass --image NAME=LAYOUT_DIR"
        )
    names = [target.name for target in targets]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"image name {', '.join(duplicates)} given more than once")
    return targets


def resolve_repositories(
    args: argparse.Namespace, config: dict, targets: list[Target]
) -> None:
    explicit: dict[str, str] = {}
    for spec in args.repository:
        name, separator, repository = spec.rpartition("=")
        if not separator:
            if len(targets) != 1:
                raise UsageError(
                    f"--repository {spec!r} without IMAGE= is ambiguous with {len(targets)} images; "
                    "use --repository IMAGE=REPO"
                )
            name, repository = targets[0].name, spec
        explicit[name] = repository
    unknown = sorted(set(explicit) - {target.name for target in targets})
    if unknown:
        raise UsageError(f"--repository names unknown image {', '.join(unknown)}")
    prefix = args.repository_prefix
    if prefix is None:
        prefix = os.environ.get(ENV_REPOSITORY_PREFIX) or config.get(
            "repository_prefix", ""
        )
    configured = config.get("repositories", {})
    for target in targets:
        repository = explicit.get(target.name) or configured.get(target.name)
        if not repository:
            repository = prefix + (target.repository or target.name)
        try:
            target.repository = client.check_repository(repository)
        except client.RegistryError as error:
            raise UsageError(f"image {target.name}: {error}") from None


def git_commit() -> tuple[str | None, str]:
    """The commit to tag with if the work tree is clean, and a note explaining when there is none."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")
    try:
        status = subprocess.run(
            ["git", "-C", workspace, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        commit = subprocess.run(
            ["git", "-C", workspace, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return (
            None,
            "no git commit to tag with (not a git checkout, or git is missing); pushed by digest only",
        )
    if status.strip():
        return (
            None,
            "the work tree has uncommitted changes, so no commit tag; pushed by digest only",
        )
    return commit, ""


def resolve_tags(
    args: argparse.Namespace, target: Target, default_tags: list[str]
) -> list[str]:
    tags = list(args.tag) if args.tag else list(default_tags)
    tags += list(target.tags)
    if args.latest:
        tags.append("latest")
    for tag in tags:
        client.check_tag(tag)
    return list(dict.fromkeys(tags))
