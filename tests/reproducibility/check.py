#!/usr/bin/env python3
"""Reproducibility: the six handler images, for linux/arm64 and linux/amd64, built a second time from
scratch, must get the digests they have in the main output base.

    tests/reproducibility/check.py            # copy of the work tree elsewhere, fresh output base
    tests/reproducibility/check.py --in-place # same work tree, fresh output base only (faster to set up)

The second build runs in a copy of the work tree at another path (so another output base, and any
absolute path that leaked into an output would show) with a fresh --output_base, no disk cache and
no remote cache results: every action runs again. Only the repository cache is shared (downloads
are pinned by sha256, so it cannot change an output). Prints both digests per image; exits 1 if any
differs (and shows which layers or config fields), 2 on a build error. Takes about as long as a
cold build (see bench/images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# //handlers/<name>:image is built for //platforms:lambda (linux/arm64); //tests/images:amd64 has
# the same six images built for linux/amd64 (symlinks to them).
TARGETS = ["//handlers/...", "//tests/images:amd64"]
QUERY = 'kind("lambda_platform_image", //handlers/...) + //tests/images:amd64'
FRESH_FLAGS = [
    "--disk_cache=",
    "--remote_cache=",
    "--noremote_accept_cached",
    "--symlink_prefix=/",  # leave the convenience symlinks of the work tree alone
]
EXPECTED_IMAGES = 12


class BuildError(Exception):
    pass


def bazel(
    workspace: Path, startup: list[str], *args: str, capture: bool = False
) -> str:
    command = [str(workspace / "tools" / "bazel"), *startup, *args]
    print(f"+ (cd {workspace} && tools/bazel {' '.join(command[1:])})", flush=True)
    result = subprocess.run(
        command,
        cwd=workspace,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        details = f":\n{result.stderr[-3000:]}" if capture else ""
        raise BuildError(
            f"`tools/bazel {' '.join(args[:2])} ...` failed with exit {result.returncode}{details}"
        )
    return result.stdout if capture else ""


def image_outputs(
    workspace: Path, startup: list[str], flags: list[str]
) -> dict[tuple[str, str], dict[str, Path]]:
    """Builds the targets; returns {(handler, architecture): {"digest": path, "manifest.json": path, ...}}."""
    started = time.monotonic()
    bazel(workspace, startup, "build", *flags, *TARGETS)
    print(f"  built in {time.monotonic() - started:.0f} s")
    execroot = Path(
        bazel(
            workspace, startup, "info", *flags, "execution_root", capture=True
        ).strip()
    )
    listing = bazel(
        workspace,
        startup,
        "cquery",
        *flags,
        QUERY,
        "--output=starlark",
        "--starlark:expr=' '.join([f.path for f in target.files.to_list()])",
        capture=True,
    )
    images: dict[tuple[str, str], dict[str, Path]] = {}
    for path in listing.split():
        file = execroot / path
        if file.name != "digest":
            continue
        files = {
            name: file.parent / name
            for name in ("digest", "manifest.json", "config.json")
        }
        architecture = json.loads(files["config.json"].read_text())["architecture"]
        # .../handlers/<name>/image_any_platform/digest or .../tests/images/amd64/<name>/digest
        handler = (
            file.parent.parent.name
            if file.parent.name == "image_any_platform"
            else file.parent.name
        )
        images[(handler, architecture)] = files
    return images


def copy_work_tree(destination: Path) -> None:
    """The files git tracks or would track (committed or not), without outputs and ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source, target = REPO / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)


def remove_tree(path: Path) -> None:
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def describe_difference(main: dict[str, Path], fresh: dict[str, Path]) -> list[str]:
    lines = []
    main_manifest = json.loads(main["manifest.json"].read_text())
    fresh_manifest = json.loads(fresh["manifest.json"].read_text())
    main_config = json.loads(main["config.json"].read_text())
    fresh_config = json.loads(fresh["config.json"].read_text())
    for index, (first, second) in enumerate(
        zip(main_manifest["layers"], fresh_manifest["layers"], strict=False)
    ):
        if first["digest"] != second["digest"]:
            created_by = main_config["history"][index].get("created_by", "?")
            lines.append(
                f"    layer {index} ({created_by}): {first['digest']} != {second['digest']}"
            )
    if len(main_manifest["layers"]) != len(fresh_manifest["layers"]):
        lines.append(
            f"    layer count {len(main_manifest['layers'])} != {len(fresh_manifest['layers'])}"
        )
    for key in sorted(set(main_config) | set(fresh_config)):
        if key != "rootfs" and main_config.get(key) != fresh_config.get(key):
            first, second = repr(main_config.get(key)), repr(fresh_config.get(key))
            lines.append(f"    config {key}: {first[:150]} != {second[:150]}")
    return lines or ["    (the manifests differ outside the layers and config)"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="build in this work tree, only the output base fresh",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the copy and the fresh output base"
    )
    parser.add_argument(
        "--tmpdir", default="/tmp", help="where the copy and the fresh output base go"
    )
    parser.add_argument(
        "--second-build-flag",
        action="append",
        default=[],
        help="extra flag for the second build only; e.g. --action_env=SOURCE_DATE_EPOCH=86400 shows that the "
        "check fails when outputs differ",
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="reproducibility-", dir=args.tmpdir))
    workspace = REPO if args.in_place else scratch / "work-tree"
    fresh_startup = [f"--output_base={scratch / 'output_base'}"]
    try:
        print(f"main build in {REPO} (its usual output base)")
        main_images = image_outputs(REPO, [], [])
        if not args.in_place:
            copy_work_tree(workspace)
        print(
            f"second build in {workspace}, output base {scratch / 'output_base'}, no disk or remote cache"
        )
        fresh_images = image_outputs(
            workspace, fresh_startup, FRESH_FLAGS + args.second_build_flag
        )

        different = 0
        print(f"\n{'image':<24} {'arch':<6} {'main output base':<73} second build")
        for key in sorted(set(main_images) | set(fresh_images)):
            main_digest = (
                main_images[key]["digest"].read_text().strip()
                if key in main_images
                else "missing"
            )
            fresh_digest = (
                fresh_images[key]["digest"].read_text().strip()
                if key in fresh_images
                else "missing"
            )
            same = main_digest == fresh_digest != "missing"
            print(
                f"{key[0]:<24} {key[1]:<6} {main_digest:<73} {'same' if same else fresh_digest}"
            )
            if not same:
                different += 1
                if key in main_images and key in fresh_images:
                    print(
                        "\n".join(
                            describe_difference(main_images[key], fresh_images[key])
                        )
                    )
        count = len(set(main_images) | set(fresh_images))
        if count != EXPECTED_IMAGES:
            print(
                f"expected {EXPECTED_IMAGES} images (6 handlers x arm64, amd64), found {count}"
            )
            return 1
        print(
            f"\nreproducibility: {count - different} of {count} image digests identical"
        )
        return 1 if different else 0
    except BuildError as error:
        print(f"reproducibility: {error}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            if (scratch / "output_base").exists():
                subprocess.run(
                    [str(workspace / "tools" / "bazel"), *fresh_startup, "shutdown"],
                    cwd=workspace,
                    check=False,
                    capture_output=True,
                )
            remove_tree(scratch)


if __name__ == "__main__":
    sys.exit(main())
