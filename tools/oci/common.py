"""Helpers shared by the OCI tools: media types, digests, canonical JSON, atomic writes."""

import datetime
import hashlib
import json
import os
import sys
import tempfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

LAYER_MEDIA_TYPES = {
    "gzip": OCI_LAYER_GZIP,
    "zstd": OCI_LAYER_ZSTD,
    "none": OCI_LAYER_TAR,
}


class UsageError(Exception):
    """Bad input: the message names the problem and how to fix it."""


def source_date_epoch():
    """The fixed timestamp of every output: SOURCE_DATE_EPOCH if set, else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise UsageError(
            f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; unset it or set it to e.g. 0"
        )
    return int(value)


def rfc3339(epoch):
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(value):
    """Bytes that depend only on the value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest):
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256" or len(hex_part) != 64:
        raise UsageError(
            f"unsupported digest {digest!r}: only sha256 digests are handled"
        )
    return hex_part


def read_json(path, what):
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{what} {path} is not valid JSON: {error}") from None


def write_atomically(path, data):
    """Writes bytes so that readers see either nothing or the whole file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


class AtomicOutput:
    """A file object written under a temporary name and renamed into place on success."""

    def __init__(self, path):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, self.temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        self.file = os.fdopen(fd, "wb")

    def __enter__(self):
        return self.file

    def __exit__(self, error_type, error, traceback):
        self.file.close()
        if error_type is None:
            os.chmod(self.temp_path, 0o644)
            os.replace(self.temp_path, self.path)
        else:
            os.unlink(self.temp_path)
        return False


def expand_param_file(argv):
    """Bazel passes long command lines as one '@file' argument: a param file with one argument per line."""
    if len(argv) == 1 and argv[0].startswith("@"):
        with open(argv[0][1:], encoding="utf-8") as handle:
            return handle.read().splitlines()
    return argv


def run_main(main):
    """Runs a tool's main(), printing UsageError as a one-line message instead of a traceback.

    With --persistent_worker (Bazel's worker protocol) it serves actions until stdin closes.
    """
    tool = os.path.basename(sys.argv[0])
    if "--persistent_worker" in sys.argv[1:]:
        from tools.oci import worker

        worker.serve(lambda argv: main(expand_param_file(argv)), UsageError, tool)
        return
    try:
        main(expand_param_file(sys.argv[1:]))
    except UsageError as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
        sys.exit(2)
