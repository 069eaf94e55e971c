"""Benchmark: pushing the handler images to a local registry cold, warm, and after a one-handler edit.

    bazel build //handlers/...                       # the image layouts
    python3 bench/push/bench_push.py NAME=LAYOUT_DIR ...   # e.g. six handler=bazel-bin/.../layout
    python3 bench/push/bench_push.py --synthetic      # six generated handler-like images

Starts Debian's docker-registry on loopback with storage in a temporary directory, then
times three pushes of all images with the real push tool:
  cold  - an empty registry: everything is uploaded (shared layers once, then mounted);
  warm  - the same images again: nothing to upload;
  edit  - one image rebuilt after a handler edit: only its handler layer, config and manifest.
The edited image is --edited NAME=LAYOUT_DIR (the layout rebuilt after editing handler.py),
or else derived here from the first image by changing a file in its last layer.
Prints wall time and bytes uploaded, mounted and already present per scenario.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tools.push import push
from tools.registry import client, layout
from tools.registry.local_registry import LocalRegistry


def edited_copy(source: Path, destination: Path) -> Path:
    """A copy of the layout whose last layer has one more line in its largest .py file (or a new file)."""
    image = layout.read_image(source)
    blobs = destination / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (source / "blobs" / "sha256").iterdir():
        os.link(blob, blobs / blob.name)
    last = image.layers[-1]
    members = []
    with tarfile.open(
        fileobj=io.BytesIO(gzip.decompress(last.path.read_bytes()))
    ) as archive:
        for member in archive.getmembers():
            data = archive.extractfile(member).read() if member.isreg() else None
            members.append((member, data))
    python_files = [
        index
        for index, (member, _) in enumerate(members)
        if member.name.endswith(".py")
    ]
    if python_files:
        index = max(python_files, key=lambda i: members[i][0].size)
        member, data = members[index]
        data += b"\n# edited for the push benchmark\n"
        member.size = len(data)
        members[index] = (member, data)
    else:
        member = tarfile.TarInfo("var/task/bench_edit.py")
        data = b"# edited for the push benchmark\n"
        member.size = len(data)
        members.append((member, data))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member, data in members:
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    compressed = gzip.compress(raw.getvalue(), mtime=0)

    def put(data: bytes) -> str:
        digest = client.sha256_digest(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    config = json.loads(image.config.path.read_bytes())
    config["rootfs"]["diff_ids"][-1] = client.sha256_digest(raw.getvalue())
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.loads(image.manifest)
    manifest["config"].update(digest=put(config_bytes), size=len(config_bytes))
    manifest["layers"][-1].update(digest=put(compressed), size=len(compressed))
    manifest_bytes = json.dumps(
        manifest, sort_keys=True, separators=(",", ":")
    ).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": client.OCI_INDEX,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": put(manifest_bytes),
                "size": len(manifest_bytes),
            }
        ],
    }
    (destination / "index.json").write_text(json.dumps(index))
    (destination / "oci-layout").write_bytes(layout.OCI_LAYOUT_FILE)
    return destination


def synthetic_layouts(root: Path) -> dict[str, Path]:
    """Six handler-like images: a 40 MiB runtime, a 60 MiB dependency layer, a small handler layer each."""
    # Imported here: only this mode needs the test helpers (and their test-only dependencies).
    from tests.push import support

    images = support.HandlerImages(root, base_size=40 << 20)
    images.deps = support.layer_bytes(
        {"var/task/lib/deps.bin": support.random_bytes(60 << 20, "deps")}
    )
    return {name: image.layout for name, image in images.build_all().items()}


def parse_images(specs: list[str]) -> dict[str, Path]:
    images = {}
    for spec in specs:
        name, separator, path = spec.partition("=")
        # Under `bazel run`, relative paths are relative to where it was started.
        path = Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / path
        if not separator or not path.is_dir():
            sys.exit(
                f"bench_push: {spec!r} is not NAME=LAYOUT_DIR of an existing directory"
            )
        images[name] = path
    return images


def run_scenario(name: str, registry: str, images: dict[str, Path], jobs: int) -> dict:
    argv = ["--registry", registry, "--jobs", str(jobs), "--tag", "bench"]
    argv += [f"--image={image}={path}" for image, path in images.items()]
    started = time.monotonic()
    code, results = push.run(argv, out=io.StringIO(), err=sys.stderr)
    seconds = time.monotonic() - started
    if code != 0:
        sys.exit(f"bench_push: the {name} push failed")
    return {
        "scenario": name,
        "seconds": round(seconds, 3),
        "uploaded": sum(result.uploaded for result in results),
        "mounted": sum(result.mounted for result in results),
        "present": sum(result.skipped for result in results),
        "blobs_uploaded": sum(len(result.uploaded_blobs) for result in results),
        "images": len(results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", metavar="NAME=LAYOUT_DIR")
    parser.add_argument(
        "--edited",
        metavar="NAME=LAYOUT_DIR",
        help="the layout of one image after a handler edit",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="benchmark six generated handler-like images",
    )
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench-push-"))
    registry = LocalRegistry(scratch / "registry")
    try:
        images = (
            synthetic_layouts(scratch / "images")
            if args.synthetic
            else parse_images(args.images)
        )
        if not images:
            parser.error("give NAME=LAYOUT_DIR arguments or --synthetic")
        if args.edited:
            edited = parse_images([args.edited])
        else:
            first = next(iter(images))
            edited = {first: edited_copy(images[first], scratch / "edited")}
        registry.start()
        total = sum(
            blob.size
            for path in images.values()
            for blob in layout.read_image(path).blobs
        )
        print(
            f"{len(images)} images, {push.human_bytes(total)} of blobs (shared ones counted per image)"
        )
        rows = [
            run_scenario("cold", registry.address, images, args.jobs),
            run_scenario("warm", registry.address, images, args.jobs),
            run_scenario("edit", registry.address, {**images, **edited}, args.jobs),
        ]
    finally:
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{'scenario':<9}{'wall':>9}{'uploaded':>13}{'mounted':>13}{'present':>13}{'blobs up':>10}"
    )
    for row in rows:
        print(
            f"{row['scenario']:<9}{row['seconds']:>8.2f}s{push.human_bytes(row['uploaded']):>13}"
            f"{push.human_bytes(row['mounted']):>13}{push.human_bytes(row['present']):>13}{row['blobs_uploaded']:>10}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
