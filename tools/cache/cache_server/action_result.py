"""ActionResult and Tree: their schema (built in code, no protoc) and the checks on them."""

from __future__ import annotations

from .errors import SHA256_HEX, BadRequest


def _build_message_classes(names: tuple[str, ...]):
    """Builds message classes from descriptors defined here (no protoc needed).

    Field numbers and types follow build/bazel/remote/execution/v2/remote_execution.proto; the
    google.protobuf well-known types it uses are replaced by local messages with the same wire
    format, so no descriptor dependencies are needed.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field_type = descriptor_pb2.FieldDescriptorProto
    scalar_types = {
        "string": field_type.TYPE_STRING,
        "bytes": field_type.TYPE_BYTES,
        "int64": field_type.TYPE_INT64,
        "int32": field_type.TYPE_INT32,
        "uint32": field_type.TYPE_UINT32,
        "bool": field_type.TYPE_BOOL,
    }
    package = "build.bazel.remote.execution.v2"
    schema = {
        "Digest": [("hash", 1, "string"), ("size_bytes", 2, "int64")],
        "Timestamp": [("seconds", 1, "int64"), ("nanos", 2, "int32")],
        "UInt32Value": [("value", 1, "uint32")],
        "Any": [("type_url", 1, "string"), ("value", 2, "bytes")],
        "NodeProperty": [("name", 1, "string"), ("value", 2, "string")],
        "NodeProperties": [
            ("properties", 1, "repeated NodeProperty"),
            ("mtime", 2, "Timestamp"),
            ("unix_mode", 3, "UInt32Value"),
        ],
        "OutputFile": [
            ("path", 1, "string"),
            ("digest", 2, "Digest"),
            ("is_executable", 4, "bool"),
            ("contents", 5, "bytes"),
            ("node_properties", 7, "NodeProperties"),
        ],
        "OutputSymlink": [
            ("path", 1, "string"),
            ("target", 2, "string"),
            ("node_properties", 4, "NodeProperties"),
        ],
        "OutputDirectory": [
            ("path", 1, "string"),
            ("tree_digest", 3, "Digest"),
            ("is_topologically_sorted", 4, "bool"),
            ("root_directory_digest", 5, "Digest"),
        ],
        "ExecutedActionMetadata": [
            ("worker", 1, "string"),
            *[
                (name + "_timestamp", number, "Timestamp")
                for number, name in enumerate(
                    [
                        "queued",
                        "worker_start",
                        "worker_completed",
                        "input_fetch_start",
                        "input_fetch_completed",
                        "execution_start",
                        "execution_completed",
                        "output_upload_start",
                        "output_upload_completed",
                    ],
                    start=2,
                )
            ],
            ("auxiliary_metadata", 11, "repeated Any"),
            ("virtual_execution_duration", 12, "Timestamp"),
        ],
        # An output directory's tree_digest names a Tree: the root Directory and all below it.
        "FileNode": [
            ("name", 1, "string"),
            ("digest", 2, "Digest"),
            ("is_executable", 4, "bool"),
            ("node_properties", 6, "NodeProperties"),
        ],
        "DirectoryNode": [("name", 1, "string"), ("digest", 2, "Digest")],
        "SymlinkNode": [
            ("name", 1, "string"),
            ("target", 2, "string"),
            ("node_properties", 4, "NodeProperties"),
        ],
        "Directory": [
            ("files", 1, "repeated FileNode"),
            ("directories", 2, "repeated DirectoryNode"),
            ("symlinks", 3, "repeated SymlinkNode"),
            ("node_properties", 5, "NodeProperties"),
        ],
        "Tree": [("root", 1, "Directory"), ("children", 2, "repeated Directory")],
        "ActionResult": [
            ("output_files", 2, "repeated OutputFile"),
            ("output_directories", 3, "repeated OutputDirectory"),
            ("exit_code", 4, "int32"),
            ("stdout_raw", 5, "bytes"),
            ("stdout_digest", 6, "Digest"),
            ("stderr_raw", 7, "bytes"),
            ("stderr_digest", 8, "Digest"),
            ("execution_metadata", 9, "ExecutedActionMetadata"),
            ("output_file_symlinks", 10, "repeated OutputSymlink"),
            ("output_directory_symlinks", 11, "repeated OutputSymlink"),
            ("output_symlinks", 12, "repeated OutputSymlink"),
        ],
    }
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tools/cache/remote_execution_subset.proto",
        package=package,
        syntax="proto3",
    )
    for message_name, fields in schema.items():
        message = file_proto.message_type.add(name=message_name)
        for field_name, number, type_spec in fields:
            repeated, _, type_name = type_spec.rpartition(" ")
            field = message.field.add(name=field_name, number=number)
            field.label = (
                field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL
            )
            if type_name in scalar_types:
                field.type = scalar_types[type_name]
            else:
                field.type = field_type.TYPE_MESSAGE
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    classes = []
    for name in names:
        descriptor = pool.FindMessageTypeByName(f"{package}.{name}")
        if hasattr(message_factory, "GetMessageClass"):
            classes.append(message_factory.GetMessageClass(descriptor))
        else:  # protobuf < 4.22
            classes.append(
                message_factory.MessageFactory(pool).GetPrototype(descriptor)
            )
    return classes


ActionResult, Tree = _build_message_classes(("ActionResult", "Tree"))


def parse_action_result(data: bytes):
    """Returns the ActionResult in `data`, or raises BadRequest naming what is wrong with it."""
    from google.protobuf.message import DecodeError

    if not data:
        raise BadRequest("empty action-cache entry: expected a serialized ActionResult")
    result = ActionResult()
    try:
        result.ParseFromString(data)
    except DecodeError as error:
        raise BadRequest(
            f"action-cache entry is not a protobuf ActionResult: {error}"
        ) from None
    # Protobuf keeps fields it does not know as "unknown fields", so arbitrary bytes often parse.
    # Outside execution_metadata (which newer clients may extend) every field must be known.
    probe = ActionResult()
    probe.CopyFrom(result)
    probe.ClearField("execution_metadata")
    size_with_unknown = len(probe.SerializeToString())
    probe.DiscardUnknownFields()
    # Serialized lengths, not ByteSize(): the pure-Python protobuf caches ByteSize() stale here.
    if len(probe.SerializeToString()) != size_with_unknown:
        raise BadRequest("action-cache entry has fields an ActionResult does not have")
    for output in result.output_files:
        _check_output_path(output.path, allow_empty=False)
        _check_digest(output.digest, f"output file {output.path!r}")
    for output in result.output_directories:
        _check_output_path(output.path, allow_empty=True)
        _check_digest(output.tree_digest, f"output directory {output.path!r}")
    for symlinks in (
        result.output_symlinks,
        result.output_file_symlinks,
        result.output_directory_symlinks,
    ):
        for symlink in symlinks:
            _check_output_path(symlink.path, allow_empty=False)
    for name in ("stdout_digest", "stderr_digest"):
        if result.HasField(name):
            _check_digest(getattr(result, name), name)
    return result


def referenced_blobs(result) -> list[str]:
    """CAS keys a client needs to use `result` (empty blobs are never stored: clients skip them)."""
    digests = [output.digest for output in result.output_files]
    digests += [output.tree_digest for output in result.output_directories]
    digests += [result.stdout_digest, result.stderr_digest]
    return sorted({digest.hash for digest in digests if digest.size_bytes > 0})


def tree_files(data: bytes) -> list[str]:
    """CAS keys of the non-empty files an output directory's Tree lists.

    Raises BadRequest when `data` is not a Tree or names a file by an invalid digest.
    """
    from google.protobuf.message import DecodeError

    tree = Tree()
    try:
        tree.ParseFromString(data)
    except DecodeError as error:
        raise BadRequest(f"not a protobuf Tree: {error}") from None
    keys = set()
    for directory in (tree.root, *tree.children):
        for file in directory.files:
            _check_digest(file.digest, f"tree file {file.name!r}")
            if file.digest.size_bytes > 0:
                keys.add(file.digest.hash)
    return sorted(keys)


def _check_output_path(path: str, allow_empty: bool) -> None:
    if (not path and not allow_empty) or path.startswith("/"):
        raise BadRequest(
            f"ActionResult has an invalid output path {path!r}: must be relative"
        )


def _check_digest(digest, what: str) -> None:
    if not SHA256_HEX.match(digest.hash) or digest.size_bytes < 0:
        raise BadRequest(
            f"ActionResult {what} has digest {digest.hash!r}/{digest.size_bytes}: "
            "expected a lowercase sha256 hex hash and a size >= 0"
        )
