"""Small, reproducible OCI image layouts to push and pull: layers, images, the six handler
images."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import random
import tarfile
from pathlib import Path

from tools.registry import client

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer_bytes(files: dict[str, bytes]) -> bytes:
    """A reproducible gzip tar layer holding `files`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def random_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclasses.dataclass
class BuiltImage:
    layout: Path
    digest: str
    manifest: bytes
    config_size: int
    layer_sizes: list[int]
    layer_digests: list[str]

    @property
    def blob_bytes(self) -> int:
        return self.config_size + sum(self.layer_sizes)


def write_image(
    destination: Path,
    layers: list[bytes],
    architecture: str = "arm64",
    label: str = "",
) -> BuiltImage:
    """An OCI layout with one image manifest, its config and `layers` (gzip tar bytes)."""
    blobs = destination / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = client.sha256_digest(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    layer_descriptors = [
        {"mediaType": OCI_LAYER, "digest": put(layer), "size": len(layer)}
        for layer in layers
    ]
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["handler.handle"], "Labels": {"test": label}},
        "rootfs": {
            "type": "layers",
            "diff_ids": [
                client.sha256_digest(gzip.decompress(layer)) for layer in layers
            ],
        },
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": client.OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": put(config_bytes),
                "size": len(config_bytes),
            },
            "layers": layer_descriptors,
        },
        sort_keys=True,
    ).encode()
    digest = put(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": client.OCI_INDEX,
        "manifests": [
            {"mediaType": client.OCI_MANIFEST, "digest": digest, "size": len(manifest)}
        ],
    }
    (destination / "index.json").write_text(json.dumps(index))
    (destination / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return BuiltImage(
        destination,
        digest,
        manifest,
        len(config_bytes),
        [len(layer) for layer in layers],
        [descriptor["digest"] for descriptor in layer_descriptors],
    )


HANDLERS = (
    "receipt_upload",
    "ocr_result",
    "embed_lines",
    "embed_words",
    "similarity",
    "compaction",
)


class HandlerImages:
    """Six handler-like images sharing a base layer and a dependency layer, one handler layer each.

    The base layer is larger than the tests' chunk size so it goes up in PATCH chunks.
    """

    def __init__(self, root: Path, base_size: int = 3 << 20):
        self.root = root
        self.base = layer_bytes(
            {"var/runtime/bootstrap": random_bytes(base_size, "base")}
        )
        self.deps = layer_bytes({"var/task/lib/dep.py": random_bytes(200_000, "deps")})
        self.sources = {
            name: f"def handle(event, context):\n    return {name!r}\n".encode()
            for name in HANDLERS
        }

    def build(self, name: str, generation: int = 0) -> BuiltImage:
        handler = layer_bytes({"var/task/handler.py": self.sources[name]})
        return write_image(
            self.root / f"{name}-{generation}",
            [self.base, self.deps, handler],
            label=name,
        )

    def build_all(self, generation: int = 0) -> dict[str, BuiltImage]:
        return {name: self.build(name, generation) for name in HANDLERS}


def image_args(built: dict[str, BuiltImage]) -> list[str]:
    return [f"--image={name}={image.layout}" for name, image in built.items()]
