"""oci_load: a `docker load` tarball of an image, and a `bazel run` target that loads it."""

load(":providers.bzl", "OciImageInfo")

_LOADER = """#!/usr/bin/env bash
# Loads the image tarball into docker or podman, whichever is installed.
set -euo pipefail
tarball="{tarball}"
if [[ ! -f "$tarball" && -n "${{RUNFILES_DIR:-}}" ]]; then
  tarball="$RUNFILES_DIR/{workspace}/{tarball}"
fi
for tool in docker podman; do
  if command -v "$tool" >/dev/null 2>&1; then
    exec "$tool" load --input "$tarball"
  fi
done
echo "Neither docker nor podman is installed here. The image tarball is:"
echo "  $(readlink -f "$tarball")"
echo "Load it where one is installed: docker load --input <tarball>  (tags: {tags})"
"""

def _oci_load_impl(ctx):
    image = ctx.attr.image[OciImageInfo]
    tarball = ctx.actions.declare_file(ctx.label.name + "/tarball.tar")
    args = ctx.actions.args()
    args.add("tarball")
    args.add("--output", tarball)
    args.add("--root", image.manifest)
    args.add("--blob", image.config)
    for layer in image.layers:
        args.add_all(["--layer", layer.metadata, layer.blob])
    for tag in ctx.attr.repo_tags:
        if ":" not in tag.rpartition("/")[2]:
            fail("repo_tags entry %r needs a tag, e.g. %r" % (tag, tag + ":latest"))
        args.add("--repo-tag", tag)
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._layout_tool,
        arguments = [args],
        inputs = [image.manifest, image.config] + [f for layer in image.layers for f in (layer.metadata, layer.blob)],
        outputs = [tarball],
        mnemonic = "OciTarball",
        progress_message = "Writing docker load tarball %{output}",
        use_default_shell_env = True,
    )
    loader = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        loader,
        _LOADER.format(
            tarball = tarball.short_path,
            workspace = ctx.workspace_name,
            tags = " ".join(ctx.attr.repo_tags) or "none",
        ),
        is_executable = True,
    )
    return [
        DefaultInfo(executable = loader, files = depset([loader]), runfiles = ctx.runfiles([tarball])),
        OutputGroupInfo(tarball = depset([tarball])),
    ]

oci_load = rule(
    implementation = _oci_load_impl,
    doc = """A `docker load` / `podman load` tarball of `image` (output group `tarball`).

    `bazel run` loads it into docker or podman when one is installed, otherwise prints where
    the tarball is. The tarball also holds an OCI layout (index.json, oci-layout), as Docker 25 writes.
    """,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "repo_tags": attr.string_list(doc = "name:tag references the loaded image gets, e.g. receipts/handler:latest"),
        "_layout_tool": attr.label(default = "//tools/oci:layout", executable = True, cfg = "exec"),
    },
    executable = True,
)
