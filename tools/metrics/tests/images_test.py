"""Per-image figures of two real images built by tools/oci (tests/BUILD.bazel), read from their
manifest, config and layout as bazel-bin holds them."""

import gzip
import hashlib
import json
from pathlib import Path

from tools.metrics import images

PACKAGE = Path("tools/metrics/tests")


def read(name: str) -> images.Image:
    return images.read_image(
        f"//tools/metrics/tests:{name}", PACKAGE / name / "manifest.json"
    )


def test_layers_sizes_and_digest_match_the_blobs():
    image = read("image_one")
    manifest_path = PACKAGE / "image_one" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert (
        image.digest
        == "sha256:" + hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    )
    assert image.digest == (PACKAGE / "image_one" / "digest").read_text().strip()
    assert [layer.digest for layer in image.layers] == [
        layer["digest"] for layer in manifest["layers"]
    ]
    for layer, descriptor in zip(image.layers, manifest["layers"], strict=True):
        blob = PACKAGE / "image_one" / "layout" / "blobs" / "sha256" / layer.digest[7:]
        assert layer.compressed_bytes == descriptor["size"] == blob.stat().st_size
        assert layer.uncompressed_bytes == len(gzip.decompress(blob.read_bytes()))
    assert image.compressed_bytes == sum(d["size"] for d in manifest["layers"])
    assert [layer.name for layer in image.layers] == [
        "//tools/metrics/tests:shared_layer",
        "//tools/metrics/tests:one_layer",
    ]


def test_shared_bytes_are_the_common_layers():
    one, two = read("image_one"), read("image_two")
    assert one.layers[0].digest == two.layers[0].digest
    assert one.layers[1].digest != two.layers[1].digest
    assert images.shared_bytes(one, [two]) == one.layers[0].compressed_bytes
    assert images.shared_bytes(one, []) == 0


def test_without_a_layout_the_uncompressed_size_is_unknown(tmp_path):
    for name in ("manifest.json", "config.json"):
        (tmp_path / name).write_bytes((PACKAGE / "image_one" / name).read_bytes())
    image = images.read_image("//x:image", tmp_path / "manifest.json")
    assert image.compressed_bytes == read("image_one").compressed_bytes
    assert image.uncompressed_bytes is None
