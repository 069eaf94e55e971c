"""oci_push (rules_oci's name) and oci_push_all: `bazel run` targets that push images.

    load("//tools/push:defs.bzl", "oci_push")
    oci_push(
        name = "push",
        image = ":image",                   # an oci_image
        repository = "receipts/embed",      # optional; default: the image name
        remote_tags = ["stable"],           # optional; added to the default tags
    )

    load("//tools/push:defs.bzl", "oci_push_all")
    oci_push_all(name = "push", pushes = ["//handlers/a:push", "//handlers/b:push"])

`bazel run //handlers/a:push` pushes one image, `bazel run //:push` all of them
concurrently; `-- --help` lists the options (registry, repository prefix, tags, ECR
repository creation, --dry-run, ...). The image name in the output table and JSON is the
handler's directory name for a target called `push`, else the target name.
"""

load("//tools/oci:defs.bzl", "OciImageInfo")

OciPushInfo = provider(
    doc = "One image an oci_push target pushes.",
    fields = {
        "name": "string: the image's name in tables and the references JSON",
        "layout": "File: the image's OCI layout directory",
        "repository": "string: the repository within the registry (before the configured prefix)",
        "remote_tags": "list of strings: tags always set",
    },
)

_RUNNER = """\
#!/usr/bin/env bash
# Written by {rule} {label}: runs tools/push/push.py on the images of this target.
set -euo pipefail
if [[ -d "$0.runfiles" ]]; then
  RUNFILES_DIR="$(cd "$0.runfiles" && pwd)"
elif [[ -z "${{RUNFILES_DIR:-}}" ]]; then
  echo "{label}: cannot find its runfiles; run it with bazel run" >&2
  exit 2
fi
export RUNFILES_DIR
bin_dir="$(cd "$(dirname "$0")" && pwd)"
exec "$RUNFILES_DIR/{tool}" \\
  --targets "$RUNFILES_DIR/{targets}" \\
  --config "$RUNFILES_DIR/{config}" \\
  --output-json "$bin_dir/{name}-references.json" \\
  "$@"
"""

def _rlocation(ctx, file):
    if file.short_path.startswith("../"):
        return file.short_path[3:]
    return ctx.workspace_name + "/" + file.short_path

def _layout_of(target):
    groups = target[OutputGroupInfo] if OutputGroupInfo in target else None
    layouts = groups.layout.to_list() if groups and hasattr(groups, "layout") else []
    if len(layouts) != 1 or not layouts[0].is_directory:
        fail("%s has no OCI layout directory (output group 'layout'); use an oci_image target" % target.label)
    if OciImageInfo not in target:
        fail("%s is not a single-platform oci_image: AWS Lambda takes single-architecture manifests" % target.label)
    return layouts[0]

def _image_name(label):
    if label.name == "push" and label.package:
        return label.package.split("/")[-1]
    return label.name

def _runner(ctx, infos, rule_name):
    seen = {}
    for info in infos:
        if info.name in seen:
            fail("two images are both named %r; give one oci_push another target name" % info.name)
        seen[info.name] = True
    targets = ctx.actions.declare_file(ctx.label.name + ".targets.json")
    ctx.actions.write(targets, json.encode_indent([
        {
            "name": info.name,
            "layout": _rlocation(ctx, info.layout),
            "repository": info.repository,
            "tags": info.remote_tags,
        }
        for info in infos
    ]))
    tool = ctx.attr._push_tool[DefaultInfo].files_to_run.executable
    runner = ctx.actions.declare_file(ctx.label.name)
    ctx.actions.write(runner, _RUNNER.format(
        rule = rule_name,
        label = str(ctx.label),
        tool = _rlocation(ctx, tool),
        targets = _rlocation(ctx, targets),
        config = _rlocation(ctx, ctx.file.config),
        name = ctx.label.name,
    ), is_executable = True)
    runfiles = ctx.runfiles(files = [targets, ctx.file.config, tool] + [info.layout for info in infos])
    runfiles = runfiles.merge(ctx.attr._push_tool[DefaultInfo].default_runfiles)
    return DefaultInfo(executable = runner, files = depset([runner, targets]), runfiles = runfiles)

_COMMON_ATTRS = {
    "config": attr.label(
        default = "//tools/push:push.toml",
        allow_single_file = True,
        doc = "The checked-in push configuration (registry, repository_prefix, ...).",
    ),
    "_push_tool": attr.label(default = "//tools/push", executable = True, cfg = "target"),
}

def _oci_push_impl(ctx):
    first = ctx.attr.repository.split("/")[0]
    if "/" in ctx.attr.repository and ("." in first or ":" in first):
        fail("oci_push %s: repository %r starts with a registry host; give the path only (e.g. %r) and set " %
             (ctx.label, ctx.attr.repository, ctx.attr.repository.partition("/")[2]) +
             "the registry with --registry, PUSH_REGISTRY or tools/push/push.toml")
    info = OciPushInfo(
        name = _image_name(ctx.label),
        layout = _layout_of(ctx.attr.image),
        repository = ctx.attr.repository or _image_name(ctx.label),
        remote_tags = ctx.attr.remote_tags,
    )
    return [_runner(ctx, [info], "oci_push"), info]

oci_push = rule(
    implementation = _oci_push_impl,
    executable = True,
    doc = "`bazel run` pushes `image` (single-platform) to `repository`; see tools/push/push.py --help.",
    attrs = dict(_COMMON_ATTRS, **{
        "image": attr.label(mandatory = True, providers = [OciImageInfo], doc = "An oci_image."),
        "repository": attr.string(doc = "Repository path in the registry, e.g. receipts/embed (no host: the " +
                                        "registry comes from --registry, PUSH_REGISTRY or push.toml)."),
        "remote_tags": attr.string_list(doc = "Tags set on every push, besides the default git commit tag."),
    }),
)

def _oci_push_all_impl(ctx):
    return [_runner(ctx, [target[OciPushInfo] for target in ctx.attr.pushes], "oci_push_all")]

oci_push_all = rule(
    implementation = _oci_push_all_impl,
    executable = True,
    doc = "`bazel run` pushes the images of several oci_push targets concurrently.",
    attrs = dict(_COMMON_ATTRS, **{
        "pushes": attr.label_list(mandatory = True, providers = [OciPushInfo], doc = "oci_push targets."),
    }),
)
