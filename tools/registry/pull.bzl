"""oci_pull: a base image fetched from a registry by digest, usable as oci_image's `base`.

In MODULE.bazel (rules_oci's names):

    oci = use_extension("//tools/registry:pull.bzl", "oci")
    oci.pull(
        name = "lambda_python_arm64",
        image = "public.ecr.aws/lambda/python",
        digest = "sha256:...",          # of the image manifest, or of an index with `platform`
        platform = "linux/arm64",
    )
    use_repo(oci, "lambda_python_arm64")

then `oci_image(base = "@lambda_python_arm64", ...)`. One pull per architecture; pick one
with select() on @platforms//cpu.

The fetch runs tools/registry/pull.py (standard library only) with the build environment's
python3: it resolves the registry's token challenge (anonymous for public images; Docker's
config.json credentials otherwise), downloads the manifest, config and layers by sha256 and
verifies each. The repository holds:

    layout/                   an OCI image layout (oci-layout, index.json, blobs/sha256/...)
    metadata/                 descriptor.json, digest, layer_<n>.json (tools/oci's layer metadata)
    BUILD.bazel               :image (OciImageInfo, the default target) and :layout (the files)
"""

load("//tools/oci:defs.bzl", "OciImageInfo", "OciLayerInfo")

def _pulled_image_impl(ctx):
    if len(ctx.files.layer_blobs) != len(ctx.files.layer_metadata):
        fail("pulled_image: %d layer blobs but %d metadata files" % (len(ctx.files.layer_blobs), len(ctx.files.layer_metadata)))
    image = OciImageInfo(
        manifest = ctx.file.manifest,
        config = ctx.file.config,
        descriptor = ctx.file.descriptor,
        digest = ctx.file.digest,
        layers = [
            OciLayerInfo(blob = blob, metadata = metadata)
            for blob, metadata in zip(ctx.files.layer_blobs, ctx.files.layer_metadata)
        ],
    )
    return [
        image,
        DefaultInfo(files = depset([ctx.file.manifest, ctx.file.config, ctx.file.descriptor, ctx.file.digest])),
        OutputGroupInfo(blobs = depset(ctx.files.layer_blobs)),
    ]

pulled_image = rule(
    implementation = _pulled_image_impl,
    doc = "OciImageInfo of an image fetched by oci_pull (used in the BUILD file oci_pull writes).",
    attrs = {
        "manifest": attr.label(allow_single_file = True, mandatory = True),
        "config": attr.label(allow_single_file = True, mandatory = True),
        "descriptor": attr.label(allow_single_file = True, mandatory = True),
        "digest": attr.label(allow_single_file = True, mandatory = True),
        "layer_blobs": attr.label_list(allow_files = True),
        "layer_metadata": attr.label_list(allow_files = True),
    },
    provides = [OciImageInfo],
)

_BUILD = """\
# Written by oci_pull from {source}. Do not edit.
load("{rules}", "pulled_image")

package(default_visibility = ["//visibility:public"])

pulled_image(
    name = "image",
    manifest = "layout/blobs/sha256/{manifest}",
    config = "layout/blobs/sha256/{config}",
    descriptor = "metadata/descriptor.json",
    digest = "metadata/digest",
    layer_blobs = {layer_blobs},
    layer_metadata = {layer_metadata},
)

alias(
    name = "{name}",
    actual = ":image",
)

filegroup(
    name = "layout",
    srcs = glob(["layout/**"]),
)
"""

def _split_image(image):
    registry, _, repository = image.partition("/")
    if not repository or not ("." in registry or ":" in registry or registry == "localhost"):
        fail("oci_pull: image %r must start with the registry host, e.g. public.ecr.aws/lambda/python" % image)
    return registry, repository

def _oci_pull_impl(rctx):
    registry, repository = _split_image(rctx.attr.image)
    if not rctx.attr.digest.startswith("sha256:"):
        fail("oci_pull %s: digest %r must be 'sha256:<64 hex>': pulls are pinned by digest, never by tag" % (rctx.attr.name, rctx.attr.digest))
    python = rctx.which("python3")
    if not python:
        fail("oci_pull needs python3 on PATH (the build environment has /usr/bin/python3)")
    script = rctx.path(Label("//tools/registry:pull.py"))
    client = ["client/%s.py" % name for name in [
        "__init__",
        "address",
        "auth",
        "credentials",
        "errors",
        "fetch",
        "names",
        "transport",
        "wire",
        "write",
    ]]
    for module in client + ["ecr.py", "layout.py"]:
        rctx.path(Label("//tools/registry:" + module))  # refetch when the fetcher's code changes
    source_root = script.dirname.dirname.dirname
    command = [
        python,
        "-B",
        script,
        "--registry",
        registry,
        "--repository",
        repository,
        "--digest",
        rctx.attr.digest,
        "--output",
        rctx.path("layout"),
        "--metadata",
        rctx.path("metadata"),
    ]
    if rctx.attr.platform:
        command += ["--platform", rctx.attr.platform]
    if rctx.attr.registry_endpoint:
        command += ["--registry-endpoint", rctx.attr.registry_endpoint]
    rctx.report_progress("Pulling %s@%s" % (rctx.attr.image, rctx.attr.digest))
    result = rctx.execute(
        command,
        environment = {"PYTHONPATH": str(source_root), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout = rctx.attr.timeout,
        quiet = True,
    )
    if result.return_code != 0:
        fail("oci_pull %s failed:\n%s%s" % (rctx.attr.name, result.stderr, result.stdout))
    summary = json.decode(result.stdout)
    rctx.file("BUILD.bazel", _BUILD.format(
        source = "%s@%s" % (rctx.attr.image, rctx.attr.digest),
        rules = str(Label("//tools/registry:pull.bzl")),
        name = rctx.attr.name.split("~")[-1].split("+")[-1],
        manifest = summary["manifest"][len("sha256:"):],
        config = summary["config"][len("sha256:"):],
        layer_blobs = repr(["layout/blobs/sha256/" + layer[len("sha256:"):] for layer in summary["layers"]]),
        layer_metadata = repr(["metadata/layer_%d.json" % number for number in range(len(summary["layers"]))]),
    ))

_PULL_ATTRS = {
    "image": attr.string(mandatory = True, doc = "registry/repository, e.g. public.ecr.aws/lambda/python"),
    "digest": attr.string(mandatory = True, doc = "sha256:... of the image manifest, or of an index (then set platform)"),
    "platform": attr.string(doc = "os/arch[/variant] to take from an index, e.g. linux/arm64"),
    "registry_endpoint": attr.string(doc = "connect to this URL instead of the registry (a mirror or a test registry)"),
    "timeout": attr.int(default = 1800, doc = "seconds the download may take"),
}

oci_pull = repository_rule(
    implementation = _oci_pull_impl,
    attrs = _PULL_ATTRS,
    doc = "Fetches an image by digest; the repository's default target provides OciImageInfo.",
)

def _oci_extension_impl(module_ctx):
    for module in module_ctx.modules:
        for pull in module.tags.pull:
            oci_pull(
                name = pull.name,
                image = pull.image,
                digest = pull.digest,
                platform = pull.platform,
                registry_endpoint = pull.registry_endpoint,
                timeout = pull.timeout,
            )

oci = module_extension(
    implementation = _oci_extension_impl,
    tag_classes = {"pull": tag_class(attrs = dict(_PULL_ATTRS, name = attr.string(mandatory = True)))},
    doc = "oci.pull(name, image, digest, platform): base images from registries, pinned by digest.",
)
