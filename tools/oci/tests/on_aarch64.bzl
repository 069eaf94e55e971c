"""oci_layer and py_layer with the layer tool run by an aarch64 CPython 3.13 under qemu-aarch64.

The layer tool runs on the exec platform, so an arm64 build host (a Graviton CI runner, an
Apple-silicon Linux VM) runs it with an aarch64 Python and aarch64 wheels. These twins of the
layer rules do the same on an x86_64 host, so that a test can compare their layers with the
native ones byte for byte.
"""

load("//tools/oci/private:layer.bzl", "OCI_LAYER_ATTRS", "PY_LAYER_ATTRS", "oci_layer_impl", "py_layer_impl")
load("//tools/oci/private:providers.bzl", "OciLayerInfo")

def _to_linux_arm64_impl(_settings, _attr):
    return {"//command_line_option:platforms": "//platforms:linux_arm64"}

_to_linux_arm64 = transition(
    implementation = _to_linux_arm64_impl,
    inputs = [],
    outputs = ["//command_line_option:platforms"],
)

def _runfiles_path(ctx, file):
    if file.short_path.startswith("../"):
        return file.short_path[3:]
    return ctx.workspace_name + "/" + file.short_path

_SCRIPT = """#!/bin/bash
# tools/oci/layer.py run by the aarch64 python3.13 of {rootfs} under qemu-aarch64.
set -euo pipefail
runfiles="${{RUNFILES_DIR:-$0.runfiles}}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
tar -xf "$runfiles/{rootfs}" -C "$root"
# An aarch64 ELF: it cannot run here without qemu, so a layer written by it is an aarch64 run.
PYTHONPATH="{pythonpath}" qemu-aarch64-static -L "$root" "$root/usr/bin/python3.13" -s -B \\
  "$runfiles/{tool}" "$@"
"""

def _aarch64_layer_tool_impl(ctx):
    library = ctx.attr.library[0]
    files = library[DefaultInfo].default_runfiles.files.to_list()
    import_dirs = {ctx.workspace_name: None}
    for file in files:
        path = _runfiles_path(ctx, file)
        if path.endswith("/site-packages"):  # an installed wheel (tools/pypi/wheel.bzl)
            import_dirs[path] = None
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        output = script,
        content = _SCRIPT.format(
            rootfs = _runfiles_path(ctx, ctx.file.rootfs),
            pythonpath = ":".join(["$runfiles/" + path for path in import_dirs]),
            tool = _runfiles_path(ctx, ctx.file.tool),
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles(files = [ctx.file.rootfs, ctx.file.tool] + files)
    return [DefaultInfo(executable = script, runfiles = runfiles)]

aarch64_layer_tool = rule(
    implementation = _aarch64_layer_tool_impl,
    doc = "The layer tool as an arm64 build host runs it: aarch64 python3.13 and wheels, under qemu.",
    attrs = {
        "library": attr.label(
            mandatory = True,
            cfg = _to_linux_arm64,
            doc = "The tool's py_library, built for linux/arm64 so that its wheels are the aarch64 ones.",
        ),
        "rootfs": attr.label(mandatory = True, allow_single_file = [".tar"], doc = "An arm64 Debian root file system with python3.13."),
        "tool": attr.label(mandatory = True, allow_single_file = [".py"], doc = "The tool's main file."),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
    executable = True,
)

# cfg = "target": the tool stands in for an arm64 exec platform whatever the configuration, and
# built in the target configuration it shares //base:rootfs_arm64 with the arm64 images.
_AARCH64_LAYER_TOOL = {
    "_layer_tool": attr.label(default = "//tools/oci/tests:aarch64_layer_tool", executable = True, cfg = "target"),
}

oci_layer_on_aarch64 = rule(
    implementation = oci_layer_impl,
    doc = "oci_layer, with the layer tool run by aarch64 Python under qemu-aarch64.",
    attrs = dict(OCI_LAYER_ATTRS, **_AARCH64_LAYER_TOOL),
    provides = [OciLayerInfo],
)

py_layer_on_aarch64 = rule(
    implementation = py_layer_impl,
    doc = "py_layer, with the layer tool run by aarch64 Python under qemu-aarch64.",
    attrs = dict(PY_LAYER_ATTRS, **_AARCH64_LAYER_TOOL),
    provides = [OciLayerInfo],
)
