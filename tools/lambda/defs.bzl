"""lambda_image: a handler's container image for AWS Lambda.

    load("//tools/lambda:defs.bzl", "lambda_image")
    lambda_image(name = "image", srcs = ["handler.py"], handler = "handler.handler")

The image is //base:lambda (the Debian Python runtime, the third-party and first-party layers
every handler shares) plus one small layer with the handler's files in /var/task. It is built
for the platform //platforms:lambda names (linux/arm64 unless `--config=amd64`), whatever the
host is. Besides `<name>` the macro defines `<name>.load` (`bazel run` loads it into docker or
podman), `push` (`bazel run` pushes it; see tools/push) and `invoke` (`bazel run` runs the
image locally under a Lambda Runtime API; see tools/devmode). `invoke` builds the image for the
platform //platforms:invoke names: this machine's, unless `--config=arm64` or `--config=amd64`.
All three are `manual`: `bazel build //handlers/...` builds the images only.
"""

load("@rules_python//python:defs.bzl", "py_binary")
load("//tools/oci:defs.bzl", "OciImageInfo", "oci_image", "oci_layer", "oci_load")
load("//tools/push:defs.bzl", "oci_push")

def _lambda_platform_transition_impl(settings, _attr):
    return {"//command_line_option:platforms": str(settings["//platforms:lambda"])}

_lambda_platform_transition = transition(
    implementation = _lambda_platform_transition_impl,
    inputs = ["//platforms:lambda"],
    outputs = ["//command_line_option:platforms"],
)

def _lambda_platform_image_impl(ctx):
    image = ctx.attr.image[0]
    return [
        image[OciImageInfo],
        DefaultInfo(files = image[DefaultInfo].files),
        image[OutputGroupInfo],
    ]

lambda_platform_image = rule(
    implementation = _lambda_platform_image_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo], cfg = _lambda_platform_transition),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
    doc = "`image` built for the platform //platforms:lambda names.",
)

_HOST_CPU_PLATFORMS = {
    "aarch64": "//platforms:linux_arm64",
    "arm64": "//platforms:linux_arm64",
    "k8": "//platforms:linux_amd64",
    "x86_64": "//platforms:linux_amd64",
}

def _invoke_platform_transition_impl(settings, _attr):
    platform = settings["//platforms:invoke"]
    if platform == Label("//platforms:host"):
        # The named platform, not //platforms:host itself: the same configuration as
        # `--config=amd64` builds, so their layers are built once.
        host_cpu = settings["//command_line_option:host_cpu"]
        if host_cpu not in _HOST_CPU_PLATFORMS:
            fail("no Lambda architecture for this machine's CPU %r: pass --config=amd64 or --config=arm64" % host_cpu)
        return {"//command_line_option:platforms": str(Label(_HOST_CPU_PLATFORMS[host_cpu]))}
    return {"//command_line_option:platforms": str(platform)}

_invoke_platform_transition = transition(
    implementation = _invoke_platform_transition_impl,
    inputs = ["//platforms:invoke", "//command_line_option:host_cpu"],
    outputs = ["//command_line_option:platforms"],
)

def _invoke_image_impl(ctx):
    image = ctx.attr.image[0][OciImageInfo]
    layouts = ctx.attr.image[0][OutputGroupInfo].layout.to_list()
    if len(layouts) != 1:
        fail("%s has %d layout outputs, expected 1" % (ctx.attr.image[0].label, len(layouts)))
    links = []
    for name, target in (("manifest.json", image.manifest), ("config.json", image.config)):
        link = ctx.actions.declare_file("%s/%s" % (ctx.label.name, name))
        ctx.actions.symlink(output = link, target_file = target)
        links.append(link)
    layout = ctx.actions.declare_directory(ctx.label.name + "/layout")
    ctx.actions.symlink(output = layout, target_file = layouts[0])
    return [DefaultInfo(
        files = depset(links[:1]),
        runfiles = ctx.runfiles(files = links + [layout]),
    )]

invoke_image = rule(
    implementation = _invoke_image_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo], cfg = _invoke_platform_transition),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
    doc = "`image` for //platforms:invoke: its manifest.json (the output), config.json and layout/ beside it (runfiles).",
)

def lambda_image(name, srcs, handler, base = "//base:lambda", visibility = None, tags = []):
    """A Lambda container image running `handler` (module.function) from `srcs`.

    Args:
      name: the image target.
      srcs: the handler's files; they land in /var/task under their file names.
      handler: the Lambda handler, e.g. "handler.handler" (the image CMD).
      base: the image to build on; its layers must bring every module the handler imports.
      visibility: of the image and push targets.
      tags: of every target.
    """
    oci_layer(
        name = name + "_files",
        files = {src: "/var/task/" + src.split(":")[-1].split("/")[-1] for src in srcs},
        tags = tags + ["manual"],
    )
    oci_image(
        name = name + "_any_platform",
        base = base,
        cmd = [handler],
        tars = [name + "_files"],
        tags = tags + ["manual"],
    )
    lambda_platform_image(
        name = name,
        image = name + "_any_platform",
        tags = tags,
        visibility = visibility,
    )
    handler_name = native.package_name().split("/")[-1]
    oci_load(
        name = name + ".load",
        image = name,
        repo_tags = ["receipt-lambdas/%s:latest" % handler_name],
        # The tarball copies every blob; build it only when asked for.
        tags = tags + ["manual"],
    )
    invoke_image(
        name = name + "_invoke",
        image = name + "_any_platform",
        tags = tags + ["manual"],
    )
    py_binary(
        name = "invoke",
        srcs = ["//tools/devmode:invoke.py"],
        main = "//tools/devmode:invoke.py",
        args = [
            "--image",
            "$(rootpath :%s_invoke)" % name,
            "--function-name",
            handler_name.replace("_", "-"),
        ],
        data = [name + "_invoke"],
        deps = ["//tools/devmode"],
        # Builds the image for this machine, which `bazel build //handlers/...` does not need.
        tags = tags + ["manual"],
        visibility = visibility,
    )
    oci_push(
        name = "push",
        image = name,
        repository = handler_name.replace("_", "-"),
        # Its runfiles are the image's OCI layout: written when pushing, not by every build.
        tags = tags + ["manual"],
        visibility = visibility,
    )
