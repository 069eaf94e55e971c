"""What the cache stores and serves is checked: CAS blobs hash to their key, action-cache entries
are ActionResults, and an action-cache hit is served only when everything it references exists
(output files, stdout/stderr, and every file the Tree of each output directory lists)."""

from __future__ import annotations

from harness import BUCKET, action_result, sha256

from tools.cache.cache_server.action_result import ActionResult, Tree


def test_cas_put_with_wrong_hash_is_rejected_and_nothing_is_stored(
    servers, moto_s3, prefix
):
    server = servers(s3=moto_s3, prefix=prefix)
    claimed = sha256(b"what the client claims")
    code, body = server.request(
        "PUT", f"/cas/{claimed}", body=b"what it actually sends"
    )
    assert code == 400
    assert sha256(b"what it actually sends").encode() in body

    assert server.get("cas", claimed)[0] == 404
    status = server.wait_for_uploads()
    assert status["totals"]["rejected_puts"] == 1
    assert moto_s3.object(f"{prefix}/cas/{claimed}") is None
    assert not list((server.cache_dir / "blobs" / "cas").rglob("*" + claimed))
    assert not list((server.cache_dir / "blobs" / "tmp").iterdir())


def test_action_cache_accepts_only_action_results(servers):
    server = servers()
    key = sha256(b"action")
    garbage = [
        b"",
        b"hello world",
        b"\xff" * 64,
        action_result(b"x") + b"\x98\x06\x01",  # field 99: not an ActionResult field
    ]
    for body in garbage:
        assert server.put("ac", key, body) == 400, body
    bad_digest = ActionResult()
    bad_digest.output_files.add(path="out").digest.hash = "not-a-sha256"
    absolute = ActionResult()
    absolute.output_files.add(path="/etc/passwd").digest.hash = sha256(b"")
    for message in (bad_digest, absolute):
        assert server.put("ac", key, message.SerializeToString()) == 400
    assert server.get("ac", key)[0] == 404
    assert server.put("ac", key, action_result()) == 200
    assert server.status()["totals"]["rejected_puts"] == len(garbage) + 2


def test_action_cache_entry_with_unknown_metadata_fields_is_accepted(servers):
    # Newer clients may add execution metadata fields this server does not know.
    server = servers()
    result = ActionResult(exit_code=0)
    # execution_metadata (field 9) holding worker="w" plus an unknown field 20 (varint 1).
    result.MergeFromString(b"\x4a\x06\x0a\x01w\xa0\x01\x01")
    assert result.execution_metadata.worker == "w"
    assert server.put("ac", sha256(b"a"), result.SerializeToString()) == 200


def test_action_cache_hit_needs_its_output_blobs(servers):
    server = servers()
    output = b"the output file"
    key = sha256(b"action with one output")
    assert server.put("ac", key, action_result(output)) == 200
    assert server.get("ac", key)[0] == 404, "AC hit although its output is missing"
    assert server.put("cas", sha256(output), output) == 200
    assert server.get("ac", key)[0] == 200


def test_action_cache_hit_from_s3_needs_its_blobs_in_s3(servers, moto_s3, prefix):
    writer = servers("writer", s3=moto_s3, prefix=prefix)
    present, absent = b"uploaded output", b"output nobody uploaded"
    complete, incomplete = sha256(b"complete action"), sha256(b"incomplete action")
    assert writer.put("cas", sha256(present), present) == 200
    assert writer.put("ac", complete, action_result(present)) == 200
    assert writer.put("ac", incomplete, action_result(present, absent)) == 200
    writer.wait_for_uploads()

    reader = servers(
        "reader", s3=moto_s3, prefix=prefix
    )  # empty disk tier: all from S3
    assert reader.get("ac", complete)[0] == 200
    assert reader.get("ac", incomplete)[0] == 404
    assert (
        reader.status()["disk"]["entries"] == 2
    )  # both entries, but no blob was fetched


def test_corrupted_objects_in_s3_are_misses_and_are_deleted(servers, moto_s3, prefix):
    server = servers(s3=moto_s3, prefix=prefix)
    claimed = sha256(b"original content")
    moto_s3.client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/cas/{claimed}", Body=b"bit rot"
    )
    action = sha256(b"action")
    moto_s3.client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/ac/{action}", Body=b"not a proto"
    )

    assert server.get("cas", claimed)[0] == 404
    assert server.get("ac", action)[0] == 404
    assert moto_s3.object(f"{prefix}/cas/{claimed}") is None
    assert moto_s3.object(f"{prefix}/ac/{action}") is None
    assert server.status()["totals"]["integrity_deletes"] == 2


def test_corrupted_blob_on_disk_is_deleted_and_refetched_from_s3(
    servers, moto_s3, prefix
):
    server = servers(s3=moto_s3, prefix=prefix)
    blob = b"precious bytes" * 1000
    digest = sha256(blob)
    assert server.put("cas", digest, blob) == 200
    server.wait_for_uploads()
    (server.cache_dir / "blobs" / "cas" / digest[:2] / digest).write_bytes(
        b"flipped bits"
    )

    assert server.get("cas", digest) == (200, blob)
    totals = server.status()["totals"]
    assert (totals["integrity_deletes"], totals["hits_from_s3"]) == (1, 1)


def test_corrupted_blob_on_disk_without_s3_is_a_miss(servers):
    server = servers()
    blob = b"precious bytes"
    digest = sha256(blob)
    assert server.put("cas", digest, blob) == 200
    path = server.cache_dir / "blobs" / "cas" / digest[:2] / digest
    path.write_bytes(b"flipped bits")
    assert server.get("cas", digest)[0] == 404
    assert not path.exists()


def tree_with_files(top: bytes, nested: bytes) -> bytes:
    """A Tree: a root directory holding `top` and a subdirectory holding `nested`."""
    tree = Tree()
    child = tree.children.add()
    nested_file = child.files.add(name="nested.txt")
    nested_file.digest.hash, nested_file.digest.size_bytes = sha256(nested), len(nested)
    top_file = tree.root.files.add(name="top.txt")
    top_file.digest.hash, top_file.digest.size_bytes = sha256(top), len(top)
    subdirectory = tree.root.directories.add(name="sub")
    child_bytes = child.SerializeToString()
    subdirectory.digest.hash = sha256(child_bytes)
    subdirectory.digest.size_bytes = len(child_bytes)
    return tree.SerializeToString()


def action_with_tree(tree: bytes) -> bytes:
    result = ActionResult(exit_code=0)
    output = result.output_directories.add(path="bazel-out/k8-fastbuild/bin/dir")
    output.tree_digest.hash, output.tree_digest.size_bytes = sha256(tree), len(tree)
    return result.SerializeToString()


def test_action_cache_hit_needs_every_file_its_output_trees_list(servers):
    server = servers()
    top, nested = b"top file", b"nested file"
    tree = tree_with_files(top, nested)
    key = sha256(b"action with an output directory")
    assert server.put("ac", key, action_with_tree(tree)) == 200
    assert server.put("cas", sha256(tree), tree) == 200
    assert server.put("cas", sha256(top), top) == 200
    # Before the fix, the tree digest alone made this a hit although nested.txt is missing.
    assert server.get("ac", key)[0] == 404, (
        "AC hit although a file of its tree is missing"
    )
    assert server.put("cas", sha256(nested), nested) == 200
    assert server.get("ac", key)[0] == 200


def test_action_cache_hit_from_s3_needs_every_tree_file_in_s3(servers, moto_s3, prefix):
    writer = servers("writer", s3=moto_s3, prefix=prefix)
    top, nested = b"top file in s3", b"nested file in s3"
    tree = tree_with_files(top, nested)
    key = sha256(b"action with an output directory, from S3")
    for kind, digest, data in (
        ("cas", sha256(tree), tree),
        ("cas", sha256(top), top),
        ("ac", key, action_with_tree(tree)),
    ):
        assert writer.put(kind, digest, data) == 200
    writer.wait_for_uploads()

    reader = servers("reader", s3=moto_s3, prefix=prefix)  # empty disk tier
    assert reader.get("ac", key)[0] == 404
    assert writer.put("cas", sha256(nested), nested) == 200
    writer.wait_for_uploads()
    assert reader.get("ac", key)[0] == 200


def test_action_cache_entry_whose_tree_is_not_a_tree_is_a_miss(servers):
    server = servers()
    not_a_tree = b"\x0a\x05ab"  # field 1 claims 5 bytes, 2 follow
    key = sha256(b"action with a broken tree")
    assert server.put("ac", key, action_with_tree(not_a_tree)) == 200
    assert server.put("cas", sha256(not_a_tree), not_a_tree) == 200
    assert server.get("ac", key)[0] == 404
    assert "which is unusable" in server.log()
