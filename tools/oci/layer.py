"""Builds one image layer: a normalized tar, compressed, plus a small JSON metadata file.

Inputs are merged in this order: existing tars (--tar), files and directories (--file),
empty directories (--dir), symlinks (--symlink), wheels (--py-wheel) and Python runfiles
(--py-file), and with --py-compile VERSION a hash-based __pycache__/*.pyc next to each of their
.py files. Entries are
normalized so the layer depends only on contents and paths: sorted, mtime fixed to
SOURCE_DATE_EPOCH (default 0), uid/gid 0 without names, files 0644 (0755 when any
execute bit was set in an input tar, or as given by --mode), directories 0755 (world-
writable sticky directories such as /tmp keep 1777), every parent directory present,
hard links pointing at the first path of their group. Compression: see compressors.py.
"""

import argparse

from tools.oci import common, compressors
from tools.oci.layers.entries import Layer
from tools.oci.layers.tarball import write_layer

DEFAULT_SITE_PACKAGES = "/usr/local/lib/python3.13/dist-packages"


def build(args):
    layer = Layer(allow_overwrite=args.allow_overwrite)
    try:
        for path in args.tar:
            layer.add_tar(path)
        for dest, source in args.file:
            layer.add_file(dest, source)
        for dest in args.dir:
            layer.add_dir(dest)
        for dest, target in args.symlink:
            layer.add_symlink(dest, target)
        layer.add_python_files(
            args.py_file,
            args.py_site_packages,
            args.py_import_root,
            args.py_main_repo,
            args.py_include,
            args.py_exclude,
            args.py_compile,
            args.py_wheel,
        )
        for path, mode in args.mode:
            try:
                layer.set_mode(path, int(mode, 8))
            except ValueError:
                raise common.UsageError(
                    f"--mode {path} {mode}: the mode must be octal, e.g. 0755"
                ) from None
        entries = layer.finalized_entries()
        epoch = common.source_date_epoch()
        with common.AtomicOutput(args.output) as blob:
            digest, size, diff_id = write_layer(
                entries, blob, args.compression, args.level, epoch
            )
    finally:
        layer.close()
    history = {
        "created": common.rfc3339(epoch),
        "created_by": args.created_by or "oci_layer",
    }
    if args.comment:
        history["comment"] = args.comment
    metadata = {
        "descriptor": {
            "mediaType": common.LAYER_MEDIA_TYPES[args.compression],
            "digest": digest,
            "size": size,
        },
        "diff_id": diff_id,
        "history": history,
    }
    common.write_atomically(args.metadata, common.canonical_json(metadata) + b"\n")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True, help="the layer blob to write")
    parser.add_argument(
        "--metadata", required=True, help="the JSON metadata file to write"
    )
    parser.add_argument(
        "--tar", action="append", default=[], help="an existing tar to include"
    )
    parser.add_argument(
        "--file", nargs=2, action="append", default=[], metavar=("DEST", "SRC")
    )
    parser.add_argument("--dir", action="append", default=[], metavar="DEST")
    parser.add_argument(
        "--symlink", nargs=2, action="append", default=[], metavar=("DEST", "TARGET")
    )
    parser.add_argument(
        "--mode", nargs=2, action="append", default=[], metavar=("DEST", "OCTAL")
    )
    parser.add_argument(
        "--py-file", nargs=2, action="append", default=[], metavar=("SHORT_PATH", "SRC")
    )
    parser.add_argument(
        "--py-wheel",
        action="append",
        default=[],
        metavar="WHL",
        help="a wheel whose files go under --py-site-packages, as an installer puts them",
    )
    parser.add_argument(
        "--py-import-root", action="append", default=[], metavar="REPO/PATH"
    )
    parser.add_argument(
        "--py-exclude", action="append", default=[], metavar="SHORT_PATH"
    )
    parser.add_argument("--py-site-packages", default=DEFAULT_SITE_PACKAGES)
    parser.add_argument("--py-main-repo", default="_main")
    parser.add_argument(
        "--py-include", choices=("all", "third_party", "first_party"), default="all"
    )
    parser.add_argument(
        "--py-compile",
        metavar="VERSION",
        help="add an unchecked-hash .pyc for each .py of --py-file and --py-wheel; VERSION is the image's "
        "Python (e.g. 3.13), which must be the one running this tool",
    )
    parser.add_argument(
        "--allow-overwrite",
        action="store_true",
        help="a later input replaces an earlier one",
    )
    parser.add_argument(
        "--compression", choices=sorted(compressors.LEVELS), default="gzip"
    )
    parser.add_argument(
        "--level",
        type=int,
        help="compression level (default: gzip 1 with zlib-ng, zstd 3)",
    )
    parser.add_argument(
        "--created-by", default="", help="the history entry's created_by text"
    )
    parser.add_argument("--comment", default="", help="the history entry's comment")
    args = parser.parse_args(argv)
    level_error = compressors.check_level(args.compression, args.level)
    if level_error:
        parser.error(level_error)
    return args


def main(argv):
    build(parse_args(argv))


if __name__ == "__main__":
    common.run_main(main)
