"""Providers of the OCI rules: what a layer, an image and an index hand to the rules that use them."""

OciLayerInfo = provider(
    doc = "One image layer, built once by its own action.",
    fields = {
        "blob": "File: the compressed layer tar (.tar.gz, .tar.zst or .tar)",
        "metadata": "File: JSON with descriptor (mediaType, digest, size), diff_id and history",
    },
)

OciImageInfo = provider(
    doc = "A single-platform image. Layers are shared, never copied, with the base it was built on.",
    fields = {
        "manifest": "File: the image manifest JSON",
        "config": "File: the image config JSON",
        "descriptor": "File: JSON descriptor of the manifest (mediaType, digest, size, platform)",
        "digest": "File: the manifest digest, 'sha256:<hex>'",
        "layers": "list of OciLayerInfo, base layers first, in manifest order",
    },
)

OciImageIndexInfo = provider(
    doc = "A multi-platform image index.",
    fields = {
        "index": "File: the image index JSON",
        "descriptor": "File: JSON descriptor of the index (mediaType, digest, size)",
        "digest": "File: the index digest, 'sha256:<hex>'",
        "images": "list of OciImageInfo, in index order",
    },
)
