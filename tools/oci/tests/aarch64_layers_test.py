"""Layers written on an arm64 build host equal those written on x86_64, byte for byte.

BUILD.bazel builds real layers of the repository twice for linux/arm64: with the layer tool on
this host's Python, and with the aarch64 python3.13 of //base:rootfs_arm64 and the aarch64
wheels under qemu-aarch64. Compression, tar normalization, .pyc compilation (marshal) and the
metadata JSON all have to be independent of the CPU for these to match.
"""

import os

import pytest

from tools.oci.tests.oci_testing import read_bytes, read_json, sha256_file, tar_members

if "TEST_SRCDIR" not in os.environ:
    pytest.skip(
        "compares Bazel-built layers: run it with bazel test", allow_module_level=True
    )

BLOB_EXTENSIONS = {"tar+gzip": ".tar.gz", "tar+zstd": ".tar.zst", "tar": ".tar"}


def layer_pairs():
    return [pair.split(",") for pair in os.environ["LAYER_PAIRS"].split()]


def blob_path(metadata_path):
    media_type = read_json(metadata_path)["descriptor"]["mediaType"]
    extension = BLOB_EXTENSIONS[media_type.rsplit(".", 1)[-1]]
    return metadata_path.removesuffix(".json") + extension


def first_difference(native_blob, aarch64_blob):
    """Where the uncompressed layers first differ, to say which step is not portable."""
    native, aarch64 = tar_members(native_blob), tar_members(aarch64_blob)
    if list(native) != list(aarch64):
        only = sorted(set(native) ^ set(aarch64))
        return f"the member lists differ, e.g. {only[:5]}"
    for name, (info, content) in native.items():
        other_info, other_content = aarch64[name]
        if info.get_info() != other_info.get_info() or content != other_content:
            return f"member {name} differs"
    return "the tars are equal: only the compressed bytes differ (the compressor is not portable)"


@pytest.mark.parametrize(
    ("native_metadata", "aarch64_metadata"),
    layer_pairs(),
    ids=[pair[0] for pair in layer_pairs()],
)
def test_layer_is_identical_on_aarch64(native_metadata, aarch64_metadata):
    native_blob, aarch64_blob = blob_path(native_metadata), blob_path(aarch64_metadata)
    native, aarch64 = read_json(native_metadata), read_json(aarch64_metadata)
    # Each metadata file describes its own blob, so equal metadata means equal blobs.
    assert sha256_file(native_blob) == native["descriptor"]["digest"]
    assert sha256_file(aarch64_blob) == aarch64["descriptor"]["digest"]
    assert tar_members(native_blob), f"{native_blob} is an empty layer"
    if native != aarch64:
        pytest.fail(
            f"{native_metadata} and {aarch64_metadata} differ: x86_64 wrote {native}, "
            f"aarch64 wrote {aarch64}; {first_difference(native_blob, aarch64_blob)}"
        )
    assert read_bytes(native_metadata) == read_bytes(aarch64_metadata)
