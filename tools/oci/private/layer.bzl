"""Layer rules: each layer is one action writing a compressed blob plus a small metadata JSON."""

load("@rules_python//python:defs.bzl", "PyInfo")
load("//tools/pypi:wheel.bzl", "WheelInfo")
load(":providers.bzl", "OciLayerInfo")
load(":worker.bzl", "WORKER_EXECUTION_REQUIREMENTS")

BLOB_EXTENSIONS = {"gzip": ".tar.gz", "none": ".tar", "zstd": ".tar.zst"}

LAYER_TOOL_ATTRS = {
    "compression": attr.string(
        default = "gzip",
        values = ["gzip", "zstd", "none"],
        doc = "gzip (zlib-ng level 1, what every registry and Lambda accept), zstd (OCI only) or none.",
    ),
    "_layer_tool": attr.label(default = "//tools/oci:layer", executable = True, cfg = "exec"),
}

def label_text(label):
    """'//pkg:name' for the main repository, so history entries carry no canonical repo names."""
    text = "//%s:%s" % (label.package, label.name)
    return "@%s%s" % (label.workspace_name, text) if label.workspace_name else text

def check_path(path, what):
    if not path or "\n" in path:
        fail("%s %r must be a non-empty path without newlines" % (what, path))
    return path

def layer_action(ctx, output_name, args, inputs, compression, created_by, comment = ""):
    """Registers the action that writes one layer from prepared tool arguments; returns its OciLayerInfo.

    Args:
      ctx: the rule context (needs LAYER_TOOL_ATTRS).
      output_name: output path prefix inside the package; extensions are added.
      args: ctx.actions.args() already holding the layer's inputs (--file, --tar, ...).
      inputs: depset or list of the files the arguments name.
      compression: "gzip", "zstd" or "none".
      created_by: history text of the layer.
      comment: optional history comment.
    """
    blob = ctx.actions.declare_file(output_name + BLOB_EXTENSIONS[compression])
    metadata = ctx.actions.declare_file(output_name + ".json")
    args.add("--output", blob)
    args.add("--metadata", metadata)
    args.add("--compression", compression)
    args.add("--created-by", created_by)
    if comment:
        args.add("--comment", comment)
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._layer_tool,
        arguments = [args],
        inputs = inputs,
        outputs = [blob, metadata],
        mnemonic = "OciLayer",
        execution_requirements = WORKER_EXECUTION_REQUIREMENTS,
        progress_message = "Building layer %{output}",
        # Passes --action_env, e.g. SOURCE_DATE_EPOCH, to the tool.
        use_default_shell_env = True,
    )
    return OciLayerInfo(blob = blob, metadata = metadata)

def tar_layer(ctx, output_name, tar, created_by):
    """A layer re-normalized from one existing tar file."""
    args = ctx.actions.args()
    args.add("--tar", tar)
    return layer_action(ctx, output_name, args, [tar], ctx.attr.compression, created_by)

def _package_relative_path(file, label):
    path = file.short_path
    if path.startswith("../"):
        path = path.split("/", 2)[2]
    if label.package and path.startswith(label.package + "/"):
        path = path[len(label.package) + 1:]
    return path

def oci_layer_impl(ctx):
    """oci_layer's implementation; tests reuse it with another layer tool."""
    args = ctx.actions.args()
    inputs = []
    for target, destination in ctx.attr.files.items():
        check_path(destination, "files destination of %s" % target.label)
        files = target[DefaultInfo].files.to_list()
        if destination.endswith("/"):
            for file in files:
                args.add_all(["--file", destination + _package_relative_path(file, target.label), file])
        elif len(files) == 1:
            args.add_all(["--file", destination, files[0]])
        else:
            fail("files: %s has %d files but destination %r names one path; end it with '/' to place them in a directory" % (
                target.label,
                len(files),
                destination,
            ))
        inputs.extend(files)
    args.add_all(ctx.files.tars, before_each = "--tar")
    inputs.extend(ctx.files.tars)
    for directory in ctx.attr.directories:
        args.add("--dir", check_path(directory, "directories entry"))
    for link, target in ctx.attr.symlinks.items():
        args.add_all(["--symlink", check_path(link, "symlink"), check_path(target, "symlink target of " + link)])
    for path, mode in ctx.attr.modes.items():
        args.add_all(["--mode", check_path(path, "modes entry"), mode])
    if ctx.attr.allow_overwrite:
        args.add("--allow-overwrite")
    layer = layer_action(
        ctx,
        ctx.label.name,
        args,
        inputs,
        ctx.attr.compression,
        ctx.attr.created_by or "oci_layer " + label_text(ctx.label),
    )
    return [layer, DefaultInfo(files = depset([layer.blob, layer.metadata]))]

OCI_LAYER_ATTRS = dict(LAYER_TOOL_ATTRS, **{
    "files": attr.label_keyed_string_dict(
        allow_files = True,
        doc = "Target -> destination. A destination ending in '/' is a directory: the target's files " +
              "keep their path relative to its package. Otherwise the target must have one file " +
              "(a directory artifact is copied as a tree).",
    ),
    "tars": attr.label_list(allow_files = True, doc = "Tar files (plain, gzip, zstd, xz, bzip2) to merge in."),
    "directories": attr.string_list(doc = "Empty directories to create."),
    "symlinks": attr.string_dict(doc = "Link path -> target (kept verbatim, relative or absolute)."),
    "modes": attr.string_dict(doc = "Path -> octal mode, e.g. {'/usr/local/bin/app': '0755', '/tmp': '1777'}."),
    "allow_overwrite": attr.bool(doc = "Let a later input replace a path instead of failing on the conflict."),
    "created_by": attr.string(doc = "History text of the layer; defaults to the target label."),
})

oci_layer = rule(
    implementation = oci_layer_impl,
    doc = """A normalized layer from files, existing tars, directories and symlinks.

    Entries are sorted, owned by 0:0 without names, dated SOURCE_DATE_EPOCH (default 1970),
    files 0644 unless `modes` says otherwise (tar members keep 0755 when executable),
    directories 0755, and every parent directory exists. Use it in oci_image's `tars`.
    """,
    attrs = OCI_LAYER_ATTRS,
    provides = [OciLayerInfo],
)

_WheelsInfo = provider(
    doc = "The wheel_library targets a Python target reaches through `deps`.",
    fields = {
        "wheels": "depset of .whl files",
        "installed": "depset of their installed site-packages trees (in runfiles)",
    },
)

def _wheels_aspect_impl(target, ctx):
    own = [target[WheelInfo]] if WheelInfo in target else []
    transitive = [dep[_WheelsInfo] for dep in getattr(ctx.rule.attr, "deps", []) if _WheelsInfo in dep]
    return [_WheelsInfo(
        wheels = depset([info.wheel for info in own], transitive = [info.wheels for info in transitive]),
        installed = depset([info.site_packages for info in own], transitive = [info.installed for info in transitive]),
    )]

# Layers take wheel files, not the trees installed from them: building an image unpacks nothing.
_wheels_aspect = aspect(implementation = _wheels_aspect_impl, attr_aspects = ["deps"])

def _wheels(targets):
    infos = [target[_WheelsInfo] for target in targets]
    return (
        depset(transitive = [info.wheels for info in infos]),
        depset(transitive = [info.installed for info in infos]),
    )

def _py_file_args(file):
    return ["--py-file", file.short_path, file.path]

def _is_third_party(file):
    return file.short_path.startswith("../")

def py_layer_impl(ctx):
    """py_layer's implementation; tests reuse it with another layer tool."""
    wheels, installed = _wheels(ctx.attr.deps)

    # The excluded targets' runfiles hold their installed trees already.
    excluded_wheels, _ = _wheels(ctx.attr.exclude)
    excluded = {
        file: None
        for file in depset(
            transitive = [dep[DefaultInfo].default_runfiles.files for dep in ctx.attr.exclude] + [installed],
        ).to_list()
    }
    files = []
    for file in depset(transitive = [dep[DefaultInfo].default_runfiles.files for dep in ctx.attr.deps]).to_list():
        if file in excluded:
            continue
        if ctx.attr.packages == "third_party" and not _is_third_party(file):
            continue
        if ctx.attr.packages == "first_party" and _is_third_party(file):
            continue
        files.append(file)
    if ctx.attr.packages == "first_party":
        wheel_files = []
    else:
        excluded_wheel_files = {wheel: None for wheel in excluded_wheels.to_list()}
        wheel_files = [wheel for wheel in wheels.to_list() if wheel not in excluded_wheel_files]
    args = ctx.actions.args()
    args.add_all(wheel_files, before_each = "--py-wheel")
    args.add_all(files, map_each = _py_file_args)
    args.add_all(
        depset(transitive = [dep[PyInfo].imports for dep in ctx.attr.deps if PyInfo in dep]),
        before_each = "--py-import-root",
    )
    args.add("--py-site-packages", check_path(ctx.attr.site_packages, "site_packages"))
    args.add("--py-main-repo", ctx.workspace_name)
    args.add("--py-include", ctx.attr.packages)
    if ctx.attr.compile_pyc:
        args.add("--py-compile", ctx.attr.python_version)
    if ctx.attr.allow_overwrite:
        args.add("--allow-overwrite")
    layer = layer_action(
        ctx,
        ctx.label.name,
        args,
        wheel_files + files,
        ctx.attr.compression,
        ctx.attr.created_by or "py_layer %s (%s packages)" % (label_text(ctx.label), ctx.attr.packages.replace("_", "-")),
    )
    return [layer, DefaultInfo(files = depset([layer.blob, layer.metadata]))]

PY_LAYER_ATTRS = dict(LAYER_TOOL_ATTRS, **{
    "deps": attr.label_list(
        mandatory = True,
        aspects = [_wheels_aspect],
        doc = "py_library targets; their whole closure is used (wheel files for wheel_library targets, runfiles for the rest).",
    ),
    "exclude": attr.label_list(
        aspects = [_wheels_aspect],
        doc = "Targets whose wheels and runfiles are left out (they are in another layer).",
    ),
    "packages": attr.string(
        default = "all",
        values = ["all", "third_party", "first_party"],
        doc = "Which files of the closure: all, third_party (wheels) or first_party (this repository).",
    ),
    "site_packages": attr.string(
        default = "/usr/local/lib/python3.13/dist-packages",
        doc = "Where the packages go. The default is where Debian's python3.13 looks for " +
              "pip-installed packages without PYTHONPATH (it never searches .../site-packages).",
    ),
    "compile_pyc": attr.bool(
        default = True,
        doc = "Also write __pycache__/<module>.cpython-XY.pyc next to every .py file, " +
              "unchecked-hash (no mtime) with the image path as source: Lambda's read-only " +
              "file system cannot cache bytecode, so without them each cold start recompiles " +
              "every imported module. Files that do not compile get none.",
    ),
    "python_version": attr.string(
        default = "3.13",
        doc = "The image's Python, which the .pyc files are for. The exec Python that runs " +
              "the layer tool must be this version, or the build fails.",
    ),
    "allow_overwrite": attr.bool(doc = "Let a later file replace one at the same path instead of failing."),
    "created_by": attr.string(doc = "History text of the layer; defaults to the target label."),
})

py_layer = rule(
    implementation = py_layer_impl,
    doc = """A layer of Python libraries installed under `site_packages`, where `import` finds them.

    Wheels (wheel_library targets in the closure) are placed as an installer would, read
    from the .whl files; other third-party files (runfiles paths '../<repo>/site-packages/...')
    keep their path below site-packages; first-party files (this repository) keep their
    path below their py_library `imports` root, or below the repository root without one.
    Split dependencies into several layers with `packages` and `exclude`, e.g. big wheels in one
    layer and `exclude = [":big_wheels"]` in the next, so one version bump rebuilds one layer.
    """,
    attrs = PY_LAYER_ATTRS,
    provides = [OciLayerInfo],
)
