"""A C++ toolchain config that compiles nothing.

Bazel's Python rules ask for a C++ toolchain of the target platform even when no C++ is built.
None is needed: every native file in the images and tests comes from a pinned wheel or .deb.
For linux/arm64 the host has no compiler; for the host itself, detecting one (cc_configure)
costs about a second of every cold build for nothing. Compiling anything with it fails.
"""

def _stub_cc_toolchain_config_impl(ctx):
    return cc_common.create_cc_toolchain_config_info(
        ctx = ctx,
        toolchain_identifier = "stub-" + ctx.attr.cpu,
        host_system_name = "local",
        target_system_name = ctx.attr.cpu + "-linux-gnu",
        target_cpu = ctx.attr.cpu,
        target_libc = "glibc",
        compiler = "none",
        abi_version = "none",
        abi_libc_version = "none",
    )

stub_cc_toolchain_config = rule(
    implementation = _stub_cc_toolchain_config_impl,
    attrs = {"cpu": attr.string(mandatory = True)},
    provides = [CcToolchainConfigInfo],
)
