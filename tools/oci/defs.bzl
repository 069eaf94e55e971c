"""OCI image rules with rules_oci's names, built without a container daemon.

    load("//tools/oci:defs.bzl", "oci_image", "oci_image_index", "oci_layer", "oci_load", "py_layer")

    oci_layer(name = "app_files", files = {":handler.py": "/var/task/handler.py"})
    py_layer(name = "deps", deps = [":handler_lib"], packages = "third_party")
    oci_image(
        name = "image",
        base = "//base:python",
        tars = [":deps", ":app_files"],
        cmd = ["handler.handle"],
    )
    oci_load(name = "load", image = ":image", repo_tags = ["receipts/handler:latest"])

Each layer is one action writing its blob and a small metadata file; an image's action reads
only metadata, so images share their base's layers and an edit to one layer re-runs one layer
action and a millisecond assembly. `<image>.layout` is the OCI image layout directory.
"""

load("//tools/oci/private:image.bzl", _oci_image = "oci_image", _oci_image_index = "oci_image_index")
load("//tools/oci/private:layer.bzl", _oci_layer = "oci_layer", _py_layer = "py_layer")
load("//tools/oci/private:load.bzl", _oci_load = "oci_load")
load(
    "//tools/oci/private:providers.bzl",
    _OciImageIndexInfo = "OciImageIndexInfo",
    _OciImageInfo = "OciImageInfo",
    _OciLayerInfo = "OciLayerInfo",
)

oci_image = _oci_image
oci_image_index = _oci_image_index
oci_layer = _oci_layer
oci_load = _oci_load
py_layer = _py_layer
OciImageInfo = _OciImageInfo
OciImageIndexInfo = _OciImageIndexInfo
OciLayerInfo = _OciLayerInfo
