"""oci_image and oci_image_index: config, manifest and index from layer metadata; layouts on demand."""

load(":layer.bzl", "LAYER_TOOL_ATTRS", "label_text", "tar_layer")
load(":providers.bzl", "OciImageIndexInfo", "OciImageInfo", "OciLayerInfo")
load(":worker.bzl", "WORKER_EXECUTION_REQUIREMENTS")

_TOOL_ATTRS = {
    "_image_tool": attr.label(default = "//tools/oci:image", executable = True, cfg = "exec"),
    "_layout_tool": attr.label(default = "//tools/oci:layout", executable = True, cfg = "exec"),
}

_CPU_TO_ARCHITECTURE = {"aarch64": "arm64", "x86_64": "amd64"}

def _target_architecture(ctx):
    for cpu, architecture in _CPU_TO_ARCHITECTURE.items():
        if ctx.target_platform_has_constraint(getattr(ctx.attr, "_cpu_" + cpu)[platform_common.ConstraintValueInfo]):
            return architecture
    return ""

def _run_image_tool(ctx, args, inputs, outputs):
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._image_tool,
        arguments = [args],
        inputs = inputs,
        outputs = outputs,
        mnemonic = "OciImage",
        execution_requirements = WORKER_EXECUTION_REQUIREMENTS,
        progress_message = "Assembling %{label}",
        use_default_shell_env = True,
    )

def _layout_action(ctx, root, blobs, layers):
    """The OCI layout directory: only built when its output group (or the .layout target) is requested."""
    layout = ctx.actions.declare_directory(ctx.label.name + "/layout")
    args = ctx.actions.args()
    args.add("layout")
    args.add("--output", layout.path)
    args.add("--root", root)
    args.add_all(blobs, before_each = "--blob")
    for layer in layers:
        args.add_all(["--layer", layer.metadata, layer.blob])
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._layout_tool,
        arguments = [args],
        inputs = [root] + blobs + [f for layer in layers for f in (layer.metadata, layer.blob)],
        outputs = [layout],
        mnemonic = "OciLayout",
        execution_requirements = WORKER_EXECUTION_REQUIREMENTS,
        progress_message = "Writing OCI layout of %{label}",
        use_default_shell_env = True,
    )
    return layout

def _unique_layers(images):
    seen = {}
    for image in images:
        for layer in image.layers:
            seen[layer.blob] = layer
    return seen.values()

def _oci_image_impl(ctx):
    base = ctx.attr.base[OciImageInfo] if ctx.attr.base else None
    layers = []
    for index, target in enumerate(ctx.attr.tars):
        if OciLayerInfo in target:
            layers.append(target[OciLayerInfo])
            continue
        for file in target[DefaultInfo].files.to_list():
            layers.append(tar_layer(
                ctx,
                "%s/layer_%d" % (ctx.label.name, len(layers)),
                file,
                "tar %s of %s" % (file.basename, label_text(target.label)),
            ))

    outputs = {
        kind: ctx.actions.declare_file("%s/%s" % (ctx.label.name, kind))
        for kind in ("manifest.json", "config.json", "descriptor.json", "digest")
    }
    args = ctx.actions.args()
    args.add("image")
    inputs = []
    if base:
        args.add("--base-manifest", base.manifest)
        args.add("--base-config", base.config)
        inputs.extend([base.manifest, base.config])
    for layer in layers:
        args.add("--layer", layer.metadata)
        inputs.append(layer.metadata)
    if ctx.attr.entrypoint:
        args.add("--entrypoint", json.encode(ctx.attr.entrypoint))
    if ctx.attr.cmd:
        args.add("--cmd", json.encode(ctx.attr.cmd))
    for flag, value in (("--env", ctx.attr.env), ("--labels", ctx.attr.labels), ("--annotations", ctx.attr.annotations)):
        if value:
            args.add(flag, json.encode(value))
    architecture = ctx.attr.architecture or ("" if base else _target_architecture(ctx))
    os = ctx.attr.os or ("" if base else "linux")
    for flag, value in (
        ("--workdir", ctx.attr.workdir),
        ("--user", ctx.attr.user),
        ("--os", os),
        ("--architecture", architecture),
        ("--variant", ctx.attr.variant),
        ("--format", ctx.attr.format),
    ):
        if value:
            args.add(flag, value)
    args.add("--output-manifest", outputs["manifest.json"])
    args.add("--output-config", outputs["config.json"])
    args.add("--output-descriptor", outputs["descriptor.json"])
    args.add("--output-digest", outputs["digest"])
    _run_image_tool(ctx, args, inputs, outputs.values())

    image = OciImageInfo(
        manifest = outputs["manifest.json"],
        config = outputs["config.json"],
        descriptor = outputs["descriptor.json"],
        digest = outputs["digest"],
        layers = (base.layers if base else []) + layers,
    )
    layout = _layout_action(ctx, image.manifest, [image.config], image.layers)
    return [
        image,
        DefaultInfo(files = depset(outputs.values())),
        OutputGroupInfo(
            layout = depset([layout]),
            blobs = depset([layer.blob for layer in image.layers]),
        ),
    ]

_oci_image = rule(
    implementation = _oci_image_impl,
    attrs = dict(LAYER_TOOL_ATTRS, **dict(_TOOL_ATTRS, **{
        "base": attr.label(providers = [OciImageInfo], doc = "The image to build on (oci_image or oci_pull)."),
        "tars": attr.label_list(
            allow_files = True,
            doc = "Layers, in order: oci_layer / py_layer targets are used as they are; any other tar " +
                  "file (plain or compressed) becomes one normalized layer of its own.",
        ),
        "entrypoint": attr.string_list(doc = "As in a Dockerfile, a new entrypoint also clears the base's cmd."),
        "cmd": attr.string_list(),
        "env": attr.string_dict(doc = "Added to the base env; values may use $NAME / ${NAME} of variables already set."),
        "workdir": attr.string(),
        "user": attr.string(),
        "labels": attr.string_dict(doc = "Config labels, merged over the base's."),
        "annotations": attr.string_dict(doc = "Manifest annotations."),
        "os": attr.string(doc = "Default: the base's, else linux."),
        "architecture": attr.string(doc = "Default: the base's, else from the target platform (arm64 or amd64)."),
        "variant": attr.string(doc = "e.g. v8 for arm64; default: the base's."),
        "format": attr.string(
            default = "oci",
            values = ["oci", "docker"],
            doc = "Manifest media types: OCI, or Docker v2 schema 2 for old registries (gzip layers only).",
        ),
        "_cpu_aarch64": attr.label(default = "@platforms//cpu:aarch64"),
        "_cpu_x86_64": attr.label(default = "@platforms//cpu:x86_64"),
    })),
    provides = [OciImageInfo],
)

def _layout_filegroup(name, kwargs):
    native.filegroup(
        name = name + ".layout",
        srcs = [name],
        output_group = "layout",
        tags = kwargs.get("tags"),
        testonly = kwargs.get("testonly"),
        visibility = kwargs.get("visibility"),
    )

def oci_image(name, **kwargs):
    """An OCI image: `bazel build` writes manifest.json, config.json, descriptor.json and digest.

    Every layer is built once by its own action; this image's action reads only layer metadata
    and the base's manifest and config, so base layers are shared, never copied. `<name>.layout`
    (or `--output_groups=layout`) writes an OCI image layout directory that skopeo, umoci and
    crane read. Attributes as in rules_oci: base, tars, entrypoint, cmd, env, workdir, user,
    labels, annotations, os, architecture, variant; plus format ("oci" or "docker") and
    compression (for plain tars in `tars`).
    """
    _oci_image(name = name, **kwargs)
    _layout_filegroup(name, kwargs)

def _platforms_transition_impl(settings, attr):
    if not attr.platforms:
        return {"": {"//command_line_option:platforms": settings["//command_line_option:platforms"]}}
    return {str(platform): {"//command_line_option:platforms": str(platform)} for platform in attr.platforms}

_platforms_transition = transition(
    implementation = _platforms_transition_impl,
    inputs = ["//command_line_option:platforms"],
    outputs = ["//command_line_option:platforms"],
)

def _oci_image_index_impl(ctx):
    if ctx.attr.platforms:
        # In the order of `platforms`, not of the transition's keys.
        targets = [
            target
            for platform in ctx.attr.platforms
            for target in ctx.split_attr.images[str(platform.label)]
        ]
    else:
        targets = ctx.attr.images
    images = [target[OciImageInfo] for target in targets]
    outputs = {
        kind: ctx.actions.declare_file("%s/%s" % (ctx.label.name, kind))
        for kind in ("index.json", "descriptor.json", "digest")
    }
    args = ctx.actions.args()
    args.add("index")
    args.add_all([image.descriptor for image in images], before_each = "--image")
    if ctx.attr.annotations:
        args.add("--annotations", json.encode(ctx.attr.annotations))
    args.add("--format", ctx.attr.format)
    args.add("--output-index", outputs["index.json"])
    args.add("--output-descriptor", outputs["descriptor.json"])
    args.add("--output-digest", outputs["digest"])
    _run_image_tool(ctx, args, [image.descriptor for image in images], outputs.values())

    index = OciImageIndexInfo(
        index = outputs["index.json"],
        descriptor = outputs["descriptor.json"],
        digest = outputs["digest"],
        images = images,
    )
    manifests_and_configs = [f for image in images for f in (image.manifest, image.config)]
    layout = _layout_action(ctx, index.index, manifests_and_configs, _unique_layers(images))
    return [
        index,
        DefaultInfo(files = depset(outputs.values())),
        OutputGroupInfo(layout = depset([layout])),
    ]

_oci_image_index = rule(
    implementation = _oci_image_index_impl,
    attrs = dict(_TOOL_ATTRS, **{
        "images": attr.label_list(
            mandatory = True,
            providers = [OciImageInfo],
            cfg = _platforms_transition,
            doc = "Single-platform images. With `platforms`, each image is built once per platform.",
        ),
        "platforms": attr.label_list(doc = "Platforms to build every image for, e.g. linux arm64 and amd64."),
        "annotations": attr.string_dict(),
        "format": attr.string(default = "oci", values = ["oci", "docker"]),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    }),
    provides = [OciImageIndexInfo],
)

def oci_image_index(name, **kwargs):
    """A multi-platform image index of `images` (optionally each built for every one of `platforms`).

    Lambda does not accept indexes: push single-platform images to Lambda repositories.
    `<name>.layout` writes an OCI layout holding the index and all its images.
    """
    _oci_image_index(name = name, **kwargs)
    _layout_filegroup(name, kwargs)
