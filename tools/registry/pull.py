"""Pulls one image by digest from a registry into an OCI image layout directory.

Run by the `oci_pull` repository rule (tools/registry/pull.bzl) with the build
environment's plain python3, so it uses the standard library only. Every manifest
and blob is fetched by its sha256 digest and verified, so what lands on disk is
exactly what the digest pins, whoever serves it.

Prints a JSON summary (manifest, config, layers, platform) on stdout. With --metadata,
also writes what tools/oci's OciImageInfo carries for a base image: descriptor.json,
digest and one layer_<n>.json (descriptor, diff_id, history) per layer.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import sys
import tempfile
from pathlib import Path

from tools.registry import client, ecr, layout


def _platform_of(descriptor: dict) -> str:
    platform = descriptor.get("platform") or {}
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    return text + (f"/{platform['variant']}" if platform.get("variant") else "")


def _matches(platform: str, wanted: str) -> bool:
    return platform == wanted or platform.startswith(wanted + "/")


def _credentials(registry_name: str):
    def find() -> client.Credentials | None:
        found = client.docker_credentials(registry_name)
        if found is None and ecr.parse_host(registry_name):
            try:
                return ecr.credentials(registry_name)
            except client.RegistryError as error:
                raise client.AuthError(
                    f"{error}; for a private ECR base image, log in first (`aws ecr get-login-password "
                    f"| docker login --username AWS --password-stdin {registry_name}`)"
                ) from None
        return found

    return find


def pull(
    registry: client.Registry,
    repository: str,
    digest: str,
    output: Path,
    platform: str | None = None,
    jobs: int = 4,
) -> dict:
    client.check_repository(repository)
    client.check_digest(digest)
    registry.ping()
    manifest, media_type, _ = registry.get_manifest(repository, digest)
    source = f"{registry.name}/{repository}@{digest}"
    if media_type in client.INDEX_TYPES:
        children = [
            entry
            for entry in json.loads(manifest).get("manifests", [])
            if entry.get("mediaType") in client.IMAGE_MANIFEST_TYPES
        ]
        available = (
            ", ".join(sorted(_platform_of(entry) for entry in children)) or "none"
        )
        if not platform:
            raise client.RegistryError(
                f'{source} is a multi-platform index ({available}); choose one with platform = "linux/arm64" '
                '(or "linux/amd64")'
            )
        chosen = [
            entry for entry in children if _matches(_platform_of(entry), platform)
        ]
        if not chosen:
            raise client.RegistryError(
                f"{source} has no image for {platform}; it has: {available}"
            )
        digest = chosen[0]["digest"]
        manifest, media_type, _ = registry.get_manifest(repository, digest)
    if media_type not in client.IMAGE_MANIFEST_TYPES:
        raise client.RegistryError(
            f"{source} has media type {media_type!r}, not an image manifest or index"
        )
    document = json.loads(manifest)
    descriptors = [document["config"], *document.get("layers", [])]
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=output.parent))
    try:

        def fetch(descriptor: dict) -> tuple[str, Path]:
            target = staging / descriptor["digest"].removeprefix("sha256:")
            registry.fetch_blob(
                repository, descriptor["digest"], target, descriptor.get("size")
            )
            return descriptor["digest"], target

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            blobs = dict(pool.map(fetch, descriptors))
        config = json.loads(blobs[document["config"]["digest"]].read_bytes())
        actual_platform = f"{config.get('os', '')}/{config.get('architecture', '')}"
        if config.get("variant"):
            actual_platform += f"/{config['variant']}"
        if platform and not _matches(actual_platform, platform):
            raise client.RegistryError(f"{source} is {actual_platform}, not {platform}")
        layout.write_layout(output, manifest, media_type, blobs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "manifest": client.sha256_digest(manifest),
        "media_type": media_type,
        "config": document["config"]["digest"],
        "layers": [layer["digest"] for layer in document.get("layers", [])],
        "platform": actual_platform,
    }


def canonical_json(value) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def write_metadata(layout_dir: Path, directory: Path) -> None:
    """The files tools/oci reads for a base image: its descriptor and per-layer metadata."""
    image = layout.read_image(layout_dir, lambda_media_types=False)
    config = json.loads(image.config.path.read_bytes())
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(image.layers):
        raise client.RegistryError(
            f"{image.digest} lists {len(image.layers)} layers but its config {len(diff_ids)} diff_ids"
        )
    history = [
        entry for entry in config.get("history", []) if not entry.get("empty_layer")
    ]
    if len(history) != len(image.layers):
        history = [{"created_by": "layer of the base image"} for _ in image.layers]
    directory.mkdir(parents=True, exist_ok=True)
    platform = {
        key: config[key] for key in ("architecture", "os", "variant") if config.get(key)
    }
    descriptor = {
        "mediaType": image.media_type,
        "digest": image.digest,
        "size": len(image.manifest),
    }
    (directory / "descriptor.json").write_bytes(
        canonical_json({**descriptor, "platform": platform}) + b"\n"
    )
    (directory / "digest").write_text(image.digest)
    for number, (blob, diff_id, entry) in enumerate(
        zip(image.layers, diff_ids, history, strict=True)
    ):
        metadata = {
            "descriptor": {
                "mediaType": blob.media_type,
                "digest": blob.digest,
                "size": blob.size,
            },
            "diff_id": diff_id,
            "history": entry,
        }
        (directory / f"layer_{number}.json").write_bytes(
            canonical_json(metadata) + b"\n"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pull", description=__doc__)
    parser.add_argument(
        "--registry", required=True, help="HOST[:PORT] or http(s)://HOST[:PORT]"
    )
    parser.add_argument("--repository", required=True, help="e.g. lambda/python")
    parser.add_argument(
        "--digest", required=True, help="sha256:... of the image manifest or index"
    )
    parser.add_argument(
        "--platform", help="OS/ARCH[/VARIANT] to take from an index, e.g. linux/arm64"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="the layout directory to write"
    )
    parser.add_argument(
        "--metadata", type=Path, help="also write tools/oci base-image metadata here"
    )
    parser.add_argument(
        "--registry-endpoint", help="connect here instead (a mirror, a test server)"
    )
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="use http:// for a non-loopback registry",
    )
    args = parser.parse_args(argv)
    try:
        address = client.parse_registry(
            args.registry, args.registry_endpoint, args.plain_http or None
        )
        registry = client.Registry(address, _credentials(address.name))
        summary = pull(
            registry, args.repository, args.digest, args.output, args.platform
        )
        if args.metadata:
            write_metadata(args.output, args.metadata)
    except client.RegistryError as error:
        print(f"oci_pull: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
