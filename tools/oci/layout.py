"""Packs built blobs for other tools: an OCI image layout directory, or a `docker load` tarball.

`layout` writes DIR/oci-layout, DIR/index.json and DIR/blobs/sha256/<hex>, hard-linking
each blob (a copy only where a link is impossible), and checks that every descriptor
reachable from the root manifest or index has its blob.

`tarball` writes one uncompressed tar holding the same blobs plus the manifest.json that
`docker load` and `podman load` read (Docker 25 writes this combined format too).
"""

import argparse
import io
import json
import os
import shutil
import tarfile

from tools.oci import common

OCI_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'
MANIFEST_TYPES = (common.OCI_MANIFEST, common.DOCKER_MANIFEST)
INDEX_TYPES = (common.OCI_INDEX, common.DOCKER_MANIFEST_LIST)


class Blobs:
    """Blob files by digest: small JSON blobs are hashed here, layer blobs come with their metadata."""

    def __init__(self):
        self.paths = {}
        self.sizes = {}

    def add_json_blob(self, path):
        with open(path, "rb") as handle:
            data = handle.read()
        digest = common.sha256_digest(data)
        self.paths[digest] = path
        self.sizes[digest] = len(data)
        return digest, data

    def add_layer(self, metadata_path, blob_path):
        descriptor = common.read_json(metadata_path, "layer metadata")["descriptor"]
        actual_size = os.path.getsize(blob_path)
        if actual_size != descriptor["size"]:
            raise common.UsageError(
                f"layer blob {blob_path} has {actual_size} bytes but its metadata {metadata_path} says "
                f"{descriptor['size']}; the two must come from the same layer action"
            )
        self.paths[descriptor["digest"]] = blob_path
        self.sizes[descriptor["digest"]] = actual_size

    def check_complete(self, root_digest):
        """Every descriptor reachable from root has a blob of the right size, so no tool finds a hole later."""
        pending = [root_digest]
        while pending:
            digest = pending.pop()
            document = common.read_json(self.paths[digest], "blob")
            children = list(document.get("manifests", []))
            if "config" in document:
                children.append(document["config"])
            children.extend(document.get("layers", []))
            for child in children:
                if child["digest"] not in self.paths:
                    raise common.UsageError(
                        f"blob {child['digest']} ({child['mediaType']}) referenced by {digest} was not given; "
                        "pass every manifest, config and layer of the image"
                    )
                if self.sizes[child["digest"]] != child["size"]:
                    raise common.UsageError(
                        f"blob {child['digest']} is not {child['size']} bytes as its descriptor says"
                    )
                if child["mediaType"] in MANIFEST_TYPES + INDEX_TYPES:
                    pending.append(child["digest"])


def root_descriptor(blobs, root_path, ref_name):
    digest, data = blobs.add_json_blob(root_path)
    media_type = json.loads(data).get("mediaType")
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        raise common.UsageError(
            f"{root_path} has mediaType {media_type!r}, not an image manifest or index"
        )
    descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
    if ref_name:
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    return descriptor


def _link_or_copy(source, destination):
    # Bazel hands inputs over as symlinks into the execroot; link the real file, not the symlink.
    real_source = os.path.realpath(source)
    try:
        os.link(real_source, destination)
    except OSError:
        shutil.copyfile(real_source, destination)


def write_layout(args):
    blobs = _collect_blobs(args)
    root = root_descriptor(blobs, args.root, args.ref_name)
    blobs.check_complete(root["digest"])
    if os.path.exists(args.output):
        shutil.rmtree(args.output)  # Bazel may leave a previous tree artifact in place
    blob_dir = os.path.join(args.output, "blobs", "sha256")
    os.makedirs(blob_dir)
    for digest, path in sorted(blobs.paths.items()):
        _link_or_copy(path, os.path.join(blob_dir, common.digest_hex(digest)))
    index = {"schemaVersion": 2, "mediaType": common.OCI_INDEX, "manifests": [root]}
    common.write_atomically(
        os.path.join(args.output, "index.json"), common.canonical_json(index)
    )
    common.write_atomically(os.path.join(args.output, "oci-layout"), OCI_LAYOUT_FILE)


def write_tarball(args):
    blobs = _collect_blobs(args)
    root = root_descriptor(blobs, args.root, args.repo_tag[0] if args.repo_tag else "")
    if root["mediaType"] not in MANIFEST_TYPES:
        raise common.UsageError(
            "docker load takes one image, not an index; load one image of the index"
        )
    blobs.check_complete(root["digest"])
    for tag in args.repo_tag:
        name, _, tag_part = tag.rpartition(":")
        if not name or not tag_part or "/" in tag_part:
            raise common.UsageError(
                f"repo tag {tag!r} needs the form name:tag, e.g. my/app:latest"
            )
    manifest = common.read_json(blobs.paths[root["digest"]], "manifest")
    docker_manifest = [
        {
            "Config": "blobs/sha256/" + common.digest_hex(manifest["config"]["digest"]),
            "RepoTags": args.repo_tag,
            "Layers": [
                "blobs/sha256/" + common.digest_hex(layer["digest"])
                for layer in manifest["layers"]
            ],
        }
    ]
    if args.repo_tag:
        root["annotations"]["io.containerd.image.name"] = args.repo_tag[0]
    index = {"schemaVersion": 2, "mediaType": common.OCI_INDEX, "manifests": [root]}
    mtime = common.source_date_epoch()
    with (
        common.AtomicOutput(args.output) as output,
        tarfile.open(
            fileobj=output, mode="w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20
        ) as archive,
    ):
        for directory in ("blobs", "blobs/sha256"):
            archive.addfile(_member(directory, tarfile.DIRTYPE, 0o755, 0, mtime))
        for digest, path in sorted(blobs.paths.items()):
            name = "blobs/sha256/" + common.digest_hex(digest)
            with open(path, "rb") as blob:
                archive.addfile(
                    _member(name, tarfile.REGTYPE, 0o644, blobs.sizes[digest], mtime),
                    blob,
                )
        for name, data in (
            ("index.json", common.canonical_json(index)),
            ("manifest.json", common.canonical_json(docker_manifest)),
            ("oci-layout", OCI_LAYOUT_FILE),
        ):
            archive.addfile(
                _member(name, tarfile.REGTYPE, 0o644, len(data), mtime),
                io.BytesIO(data),
            )


def _member(name, kind, mode, size, mtime):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _collect_blobs(args):
    blobs = Blobs()
    for path in args.blob:
        blobs.add_json_blob(path)
    for metadata_path, blob_path in args.layer:
        blobs.add_layer(metadata_path, blob_path)
    return blobs


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    layout = commands.add_parser("layout", help="an OCI image layout directory")
    layout.add_argument(
        "--ref-name",
        default="latest",
        help="the index.json tag (umoci's default is latest)",
    )
    tarball = commands.add_parser("tarball", help="a docker load / podman load tarball")
    tarball.add_argument(
        "--repo-tag",
        action="append",
        default=[],
        help="name:tag given to the loaded image",
    )
    for command in (layout, tarball):
        command.add_argument("--output", required=True)
        command.add_argument(
            "--root",
            required=True,
            help="the image manifest or index the output points at",
        )
        command.add_argument(
            "--blob",
            action="append",
            default=[],
            help="a manifest, config or index JSON",
        )
        command.add_argument(
            "--layer",
            nargs=2,
            action="append",
            default=[],
            metavar=("METADATA", "BLOB"),
        )
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.command == "layout":
        write_layout(args)
    else:
        write_tarball(args)


if __name__ == "__main__":
    common.run_main(main)
