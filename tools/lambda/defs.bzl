"""lambda_image: a handler's container image for AWS Lambda.

    load("//tools/lambda:defs.bzl", "lambda_image")
    lambda_image(name = "image", srcs = ["handler.py"], handler = "handler.handler")

The image is //base:lambda (the Debian Python runtime, the third-party and first-party layers
every handler shares) plus one small layer with the handler's files in /var/task. It is built
for the platform //platforms:lambda names (linux/arm64 unless `--config=amd64`), whatever the
host is. Besides `<name>` the macro defines `<name>.load` (`bazel run` loads it into docker or
podman) and `push` (`bazel run` pushes it; see tools/push). Both are `manual`: `bazel build
//handlers/...` builds the images only.
"""

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
    oci_push(
        name = "push",
        image = name,
        repository = handler_name.replace("_", "-"),
        # Its runfiles are the image's OCI layout: written when pushing, not by every build.
        tags = tags + ["manual"],
        visibility = visibility,
    )
