"""wheel_library: one downloaded wheel as a Python library, installed by an action.

The wheel repositories (extension.bzl) only download their .whl file; unpacking it is an action
here, run only when a test or binary needs the installed files, and cached like any action. An
image layer (py_layer) reads the wheel files themselves, so building images unpacks nothing.
"""

load("@rules_python//python:defs.bzl", "PyInfo")

WheelInfo = provider(
    doc = "The wheel file a wheel_library installs, and the tree it installs it into.",
    fields = {
        "wheel": "the .whl File",
        "site_packages": "the installed site-packages tree artifact",
    },
)

def _wheel_library_impl(ctx):
    site_packages = ctx.actions.declare_directory("site-packages")
    scripts = {script.basename: script for script in ctx.outputs.scripts}
    args = ctx.actions.args()
    args.add(ctx.file.wheel)
    args.add(site_packages.path)
    for name, script in scripts.items():
        args.add_all(["--script", name, script.dirname])
    ctx.actions.run(
        executable = ctx.executable._installer,
        arguments = [args],
        inputs = [ctx.file.wheel],
        outputs = [site_packages] + scripts.values(),
        mnemonic = "InstallWheel",
        progress_message = "Installing %s" % ctx.file.wheel.basename,
    )
    import_root = "%s/site-packages" % (ctx.label.workspace_name or ctx.workspace_name)
    return [
        DefaultInfo(
            files = depset([site_packages] + scripts.values()),
            runfiles = ctx.runfiles(files = [site_packages]),
        ),
        PyInfo(
            transitive_sources = depset([site_packages]),
            imports = depset([import_root]),
        ),
        WheelInfo(wheel = ctx.file.wheel, site_packages = site_packages),
    ]

wheel_library = rule(
    implementation = _wheel_library_impl,
    doc = "A wheel installed under `site-packages/` (an import root), plus the named scripts.",
    attrs = {
        "wheel": attr.label(mandatory = True, allow_single_file = [".whl"]),
        "scripts": attr.output_list(doc = "Scripts of the wheel (`<dist>.data/scripts/<name>`) to install, as `bin/<name>`."),
        "_installer": attr.label(default = "//tools/pypi:install_wheel", executable = True, cfg = "exec"),
    },
    provides = [PyInfo, WheelInfo],
)
