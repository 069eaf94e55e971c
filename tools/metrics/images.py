"""Per-image figures from an image's manifest.json and config.json (tools/oci's outputs):
digest, architecture, and each layer's compressed and uncompressed size.

Standard library only (runs in the launcher on the host's python3).
"""

import json
import re
import struct
from pathlib import Path
from typing import NamedTuple

# The label in a layer's history entry, e.g. "py_layer //base:site_packages_ml (third-party
# packages)" or "tar rootfs_arm64.tar of //base:rootfs_arm64".
LABEL = re.compile(r"(//[^\s]+)")
GZIP_LAYER = "+gzip"
PLAIN_TAR_LAYERS = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)


# NamedTuples, not dataclasses, for the import cost (see bep.py).
class Layer(NamedTuple):
    digest: str
    compressed_bytes: int
    uncompressed_bytes: int | None  # None when the blob is not on disk
    name: str  # the Bazel label that made it, or its history text


class Image(NamedTuple):
    label: str
    digest: str  # sha256 of the manifest: the digest a registry reports
    architecture: str
    layers: list[Layer]

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.compressed_bytes for layer in self.layers)

    @property
    def uncompressed_bytes(self) -> int | None:
        sizes = [layer.uncompressed_bytes for layer in self.layers]
        return None if None in sizes else sum(sizes)


def uncompressed_size(blob: Path, media_type: str, size: int) -> int | None:
    """The layer's tar size: a gzip member's ISIZE trailer (tools/oci writes one member per
    layer, and layers are far below the 4 GiB where ISIZE wraps), without decompressing."""
    if media_type in PLAIN_TAR_LAYERS:
        return size
    if not media_type.endswith(GZIP_LAYER) or not blob.is_file():
        return None
    with open(blob, "rb") as stream:
        stream.seek(-4, 2)
        return struct.unpack("<I", stream.read(4))[0]


def layer_name(history: dict) -> str:
    text = history.get("created_by") or history.get("comment") or "layer"
    match = LABEL.search(text)
    return match.group(1) if match else text


def read_image(label: str, manifest_path: Path) -> Image:
    """The image whose manifest is `manifest_path`; its config.json and layout/ are siblings."""
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    config = json.loads((manifest_path.parent / "config.json").read_text())
    # Layers have history entries, empty_layer entries do not.
    history = [h for h in config.get("history", []) if not h.get("empty_layer")]
    blobs = manifest_path.parent / "layout" / "blobs"
    layers = []
    for index, descriptor in enumerate(manifest["layers"]):
        algorithm, _, hexdigest = descriptor["digest"].partition(":")
        layers.append(
            Layer(
                digest=descriptor["digest"],
                compressed_bytes=int(descriptor["size"]),
                uncompressed_bytes=uncompressed_size(
                    blobs / algorithm / hexdigest,
                    descriptor.get("mediaType", ""),
                    int(descriptor["size"]),
                ),
                name=layer_name(history[index]) if index < len(history) else "layer",
            )
        )
    digest_file = manifest_path.parent / "digest"
    if digest_file.is_file():  # tools/oci writes it
        digest = digest_file.read_text().strip()
    else:
        import hashlib  # here: loading OpenSSL costs more than a build's recording otherwise

        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Image(
        label=label,
        digest=digest,
        architecture=config.get("architecture", ""),
        layers=layers,
    )


def shared_bytes(image: Image, others: list[Image]) -> int:
    """Compressed bytes of `image`'s layers that at least one of `others` also has."""
    elsewhere = {layer.digest for other in others for layer in other.layers}
    return sum(
        layer.compressed_bytes for layer in image.layers if layer.digest in elsewhere
    )
