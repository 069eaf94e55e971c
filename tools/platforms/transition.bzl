"""platform_transition_filegroup: the files (and runfiles) of targets built for another platform.

Same name and attributes as aspect_bazel_lib's rule, which is not available offline here.
"""

def _platform_transition_impl(_settings, attr):
    return {"//command_line_option:platforms": str(attr.target_platform)}

_platform_transition = transition(
    implementation = _platform_transition_impl,
    inputs = [],
    outputs = ["//command_line_option:platforms"],
)

def _platform_transition_filegroup_impl(ctx):
    files = []
    for src in ctx.attr.srcs:
        files.append(src[DefaultInfo].files)
        files.append(src[DefaultInfo].default_runfiles.files)
    return [DefaultInfo(files = depset(transitive = files))]

platform_transition_filegroup = rule(
    implementation = _platform_transition_filegroup_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = True, cfg = _platform_transition),
        "target_platform": attr.label(mandatory = True),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
    doc = "Builds `srcs` for `target_platform`; provides their files and runfiles.",
)
