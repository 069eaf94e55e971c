"""Reading one single-platform image out of an OCI image layout, and writing one.

A layout is a directory with `oci-layout`, `index.json` and `blobs/sha256/<hex>`
(https://github.com/opencontainers/image-spec/blob/main/image-layout.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from tools.registry import client

# What AWS Lambda accepts in a function image: no zstd, no foreign layers.
LAMBDA_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
OCI_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


class LayoutError(client.RegistryError):
    pass


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    path: Path


@dataclasses.dataclass(frozen=True)
class Image:
    """One image manifest with its config and layers, as found in a layout."""

    layout: Path
    manifest: bytes
    media_type: str
    digest: str
    platform: str
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


def blob_path(layout: Path, digest: str) -> Path:
    client.check_digest(digest)
    return Path(layout) / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise LayoutError(
            f"{what} {path} is missing; is this an OCI image layout?"
        ) from None
    except ValueError as error:
        raise LayoutError(f"{what} {path} is not valid JSON: {error}") from None


def _platform_text(platform: dict) -> str:
    parts = [platform.get("os", ""), platform.get("architecture", "")]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(parts)


def _matches(platform: str, wanted: str | None) -> bool:
    # "linux/arm64" matches "linux/arm64/v8": the variant is optional unless asked for.
    return wanted is None or platform == wanted or platform.startswith(wanted + "/")


def _descriptor_blob(layout: Path, descriptor: dict, what: str) -> Blob:
    path = blob_path(layout, descriptor.get("digest", ""))
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise LayoutError(
            f"{what} {descriptor['digest']} is missing from {layout}; rebuild the image"
        ) from None
    if size != descriptor.get("size"):
        raise LayoutError(
            f"{what} {path} has {size} bytes but its descriptor says {descriptor.get('size')}; rebuild the image"
        )
    return Blob(descriptor["digest"], size, descriptor.get("mediaType", ""), path)


def _candidates(
    layout: Path, descriptors: list[dict], inherited: str = ""
) -> list[tuple[dict, str]]:
    """Image manifest descriptors reachable from `descriptors`, with their platform if known."""
    found = []
    for descriptor in descriptors:
        platform = (
            _platform_text(descriptor["platform"])
            if descriptor.get("platform")
            else inherited
        )
        media_type = descriptor.get("mediaType")
        if media_type in client.INDEX_TYPES:
            nested = _read_json(blob_path(layout, descriptor["digest"]), "image index")
            found += _candidates(layout, nested.get("manifests", []), platform)
        elif media_type in client.IMAGE_MANIFEST_TYPES:
            found.append((descriptor, platform))
    return found


def read_image(
    layout: Path, platform: str | None = None, lambda_media_types: bool = True
) -> Image:
    """The single-platform image in `layout` (the one for `platform` if the layout holds several)."""
    layout = Path(layout)
    if not (layout / "oci-layout").is_file():
        raise LayoutError(
            f"{layout} is not an OCI image layout (no oci-layout file); pass an image's layout directory"
        )
    index = _read_json(layout / "index.json", "index")
    candidates = _candidates(layout, index.get("manifests", []))
    if not candidates:
        raise LayoutError(f"{layout}/index.json lists no image manifest")
    resolved = []
    for descriptor, known_platform in candidates:
        manifest_blob = _descriptor_blob(layout, descriptor, "manifest")
        manifest = manifest_blob.path.read_bytes()
        document = json.loads(manifest)
        config_blob = _descriptor_blob(layout, document["config"], "config")
        if not known_platform:
            config = _read_json(config_blob.path, "image config")
            known_platform = _platform_text(config)
        resolved.append((descriptor, known_platform, manifest, document, config_blob))
    chosen = [entry for entry in resolved if _matches(entry[1], platform)]
    platforms = ", ".join(sorted({entry[1] for entry in resolved}))
    if not chosen:
        raise LayoutError(
            f"{layout} has no image for platform {platform} (it has: {platforms})"
        )
    if len({entry[2] for entry in chosen}) > 1:
        raise LayoutError(
            f"{layout} holds several images ({platforms}); choose one with --platform "
            "(AWS Lambda takes single-architecture manifests, not an index)"
        )
    descriptor, known_platform, manifest, document, config_blob = chosen[0]
    media_type = document.get("mediaType") or descriptor["mediaType"]
    layers = tuple(
        _descriptor_blob(layout, layer, "layer") for layer in document.get("layers", [])
    )
    if lambda_media_types:
        for layer in layers:
            if layer.media_type not in LAMBDA_LAYER_TYPES:
                raise LayoutError(
                    f"layer {layer.digest} of {layout} has media type {layer.media_type}, which AWS Lambda "
                    "rejects; build the image with gzip layers"
                )
    return Image(
        layout,
        manifest,
        media_type,
        descriptor["digest"],
        known_platform,
        config_blob,
        layers,
    )


def write_layout(
    destination: Path, manifest: bytes, media_type: str, blobs: dict[str, Path]
) -> None:
    """Writes a layout holding one image; `blobs` maps digests to files moved into it.

    Built in a sibling temporary directory and renamed into place, so the destination
    is either absent or complete.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".layout-", dir=destination.parent))
    try:
        blob_dir = staging / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        digest = client.sha256_digest(manifest)
        (blob_dir / digest.removeprefix("sha256:")).write_bytes(manifest)
        for blob_digest, path in sorted(blobs.items()):
            os.replace(
                path,
                blob_dir / client.check_digest(blob_digest).removeprefix("sha256:"),
            )
        index = {
            "schemaVersion": 2,
            "mediaType": client.OCI_INDEX,
            "manifests": [
                {"mediaType": media_type, "digest": digest, "size": len(manifest)}
            ],
        }
        (staging / "index.json").write_bytes(
            json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        )
        (staging / "oci-layout").write_bytes(OCI_LAYOUT_FILE)
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.chmod(0o755)
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
