"""image_variants: handler images built for one platform, re-exposed under distinct paths.

The same image built for linux/arm64 and linux/amd64 has the same runfiles paths in both
configurations, so a test that needs both would get only one of them. This rule builds `images`
for `platform` (or as they are, without one) and symlinks each image's manifest.json,
config.json, digest, descriptor.json and OCI layout directory to
`<name>/<package basename>/...`: no blob is copied.
"""

load("//tools/oci:defs.bzl", "OciImageInfo")

def _platform_transition_impl(settings, attr):
    if not attr.platform:
        return {"//command_line_option:platforms": settings["//command_line_option:platforms"]}
    return {"//command_line_option:platforms": str(attr.platform)}

_platform_transition = transition(
    implementation = _platform_transition_impl,
    inputs = ["//command_line_option:platforms"],
    outputs = ["//command_line_option:platforms"],
)

def _image_variants_impl(ctx):
    outputs = []
    for target in ctx.attr.images:
        image = target[OciImageInfo]
        directory = "%s/%s" % (ctx.label.name, target.label.package.split("/")[-1])
        for file in (image.manifest, image.config, image.digest, image.descriptor):
            link = ctx.actions.declare_file("%s/%s" % (directory, file.basename))
            ctx.actions.symlink(output = link, target_file = file)
            outputs.append(link)
        layouts = target[OutputGroupInfo].layout.to_list()
        if len(layouts) != 1:
            fail("%s has %d layout outputs, expected 1" % (target.label, len(layouts)))
        layout = ctx.actions.declare_directory(directory + "/layout")
        ctx.actions.symlink(output = layout, target_file = layouts[0])
        outputs.append(layout)
    return [DefaultInfo(files = depset(outputs))]

image_variants = rule(
    implementation = _image_variants_impl,
    attrs = {
        "images": attr.label_list(mandatory = True, providers = [OciImageInfo], cfg = _platform_transition),
        "platform": attr.label(doc = "Target platform; none: the images as the current configuration builds them."),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
    doc = "Symlinks of images' manifest, config, digest, descriptor and layout under <name>/<package>/.",
)
