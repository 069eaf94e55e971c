"""The push tool against real registries (Debian's docker-registry with htpasswd and token
auth): what goes up, what is skipped or mounted, and what the images look like afterwards."""

from __future__ import annotations

import json

import pytest

from tests.push import support
from tools.registry import client

HANDLERS = support.HANDLERS


def test_first_push_uploads_everything_and_a_second_push_nothing(
    basic_registry, images, run_push
):
    built = images.build_all()
    first = run_push("--registry", basic_registry.address, *support.image_args(built))
    assert first.code == 0, first.stderr
    results = first.by_name()
    shared = images.base, images.deps
    # The shared base and dependency layers go up once and are mounted into the other five repositories.
    assert sum(r.uploaded for r in results.values()) == sum(
        len(layer) for layer in shared
    ) + sum(
        image.config_size + image.layer_sizes[2] + len(image.manifest)
        for image in built.values()
    )
    assert sum(r.mounted for r in results.values()) == 5 * sum(
        len(layer) for layer in shared
    )
    for name, image in built.items():
        result = results[name]
        assert result.uploaded + result.mounted == image.blob_bytes + len(
            image.manifest
        )
        assert result.image.digest == image.digest
        assert (
            basic_registry.client().manifest_digest(name, image.digest) == image.digest
        )

    second = run_push("--registry", basic_registry.address, *support.image_args(built))
    assert second.code == 0, second.stderr
    for name, result in second.by_name().items():
        assert (result.uploaded, result.mounted, result.skipped) == (
            0,
            0,
            built[name].blob_bytes,
        )
    assert "uploaded 0 B, mounted 0 B" in second.stdout


def test_one_handler_edit_uploads_only_its_handler_layer_config_and_manifest(
    open_registry, images, run_push
):
    run = run_push(
        "--registry", open_registry.address, *support.image_args(images.build_all())
    )
    assert run.code == 0, run.stderr

    images.sources["embed_lines"] += b"# edited\n"
    rebuilt = images.build_all(generation=1)
    again = run_push("--registry", open_registry.address, *support.image_args(rebuilt))
    assert again.code == 0, again.stderr
    edited = rebuilt["embed_lines"]
    results = again.by_name()
    config_digest = json.loads(edited.manifest)["config"]["digest"]
    assert sorted(results["embed_lines"].uploaded_blobs) == sorted(
        [config_digest, edited.layer_digests[2]]
    )
    assert results["embed_lines"].uploaded == edited.config_size + edited.layer_sizes[
        2
    ] + len(edited.manifest)
    assert results["embed_lines"].skipped == len(images.base) + len(images.deps)
    for name in set(HANDLERS) - {"embed_lines"}:
        assert results[name].uploaded == 0, name
        assert not results[name].manifest_uploaded


def test_pushed_images_pull_back_with_skopeo_under_the_local_digest(
    basic_registry, images, run_push, tmp_path
):
    built = {name: images.build(name) for name in HANDLERS[:2]}
    run = run_push(
        "--registry", basic_registry.address, "--tag", "v1", *support.image_args(built)
    )
    assert run.code == 0, run.stderr
    creds = f"{basic_registry.user}:{basic_registry.password}"
    for name, image in built.items():
        for number, reference in enumerate((f"@{image.digest}", ":v1")):
            pulled = tmp_path / f"pulled-{name}-{number}"
            support.skopeo_copy(
                f"docker://{basic_registry.address}/{name}{reference}",
                f"oci:{pulled}",
                "--src-tls-verify=false",
                f"--src-creds={creds}",
            )
            index = json.loads((pulled / "index.json").read_text())
            assert [entry["digest"] for entry in index["manifests"]] == [image.digest]
            local_blobs = sorted(
                p.name for p in (image.layout / "blobs" / "sha256").iterdir()
            )
            assert (
                sorted(p.name for p in (pulled / "blobs" / "sha256").iterdir())
                == local_blobs
            )


def test_token_auth_push_then_anonymous_pull(
    token_registry, token_server, images, run_push, tmp_path
):
    image = images.build("ocr_result")
    run = run_push(
        "--registry", token_registry.address, f"--image=ocr_result={image.layout}"
    )
    assert run.code == 0, run.stderr
    pushes = [
        a
        for claims in token_server.issued
        for a in claims["access"]
        if "push" in a["actions"]
    ]
    assert pushes and all(claims["sub"] == "pusher" for claims in token_server.issued)

    anonymous = client.Registry(
        client.parse_registry(token_registry.address), lambda: None
    )
    body, _, digest = anonymous.get_manifest("ocr_result", image.digest)
    assert digest == image.digest and body == image.manifest
    layer = image.layer_digests[2]
    anonymous.fetch_blob("ocr_result", layer, tmp_path / "layer", image.layer_sizes[2])
    assert (tmp_path / "layer").read_bytes() == (
        image.layout / "blobs" / "sha256" / layer[7:]
    ).read_bytes()
    # Anonymous callers get pull only, so pushing without credentials is refused with a clear message.
    with pytest.raises(
        client.AuthError, match="rejected putting manifest .* anonymously"
    ):
        anonymous.put_manifest(
            "ocr_result", "stolen", image.manifest, client.OCI_MANIFEST
        )


def test_dry_run_reports_what_would_upload_and_uploads_nothing(
    open_registry, images, run_push
):
    built = images.build_all()
    run = run_push(
        "--registry",
        open_registry.address,
        "--dry-run",
        "--tag",
        "v1",
        *support.image_args(built),
    )
    assert run.code == 0, run.stderr
    assert "WOULD UPLOAD" in run.stdout
    total = sum(r.uploaded + r.mounted for r in run.results)
    assert total == sum(
        image.blob_bytes + len(image.manifest) for image in built.values()
    )
    catalog = open_registry.client().request("GET", "/v2/_catalog", scopes=())
    assert json.loads(catalog.body)["repositories"] == []


def test_table_and_references_json_for_iac(open_registry, images, run_push, tmp_path):
    built = {name: images.build(name) for name in HANDLERS[:3]}
    output = tmp_path / "out" / "references.json"
    args = [
        "--registry",
        open_registry.address,
        "--tag",
        "v7",
        "--output-json",
        str(output),
    ]
    run = run_push(*args, *support.image_args(built))
    assert run.code == 0, run.stderr
    references = json.loads(output.read_text())
    assert set(references["images"]) == set(built)
    for name, image in built.items():
        entry = references["images"][name]
        assert entry["reference"] == f"{open_registry.address}/{name}@{image.digest}"
        assert entry["tags"] == ["v7"] and entry["platform"] == "linux/arm64"
        line = next(
            line for line in run.stdout.splitlines() if line.startswith(name + " ")
        )
        assert entry["reference"] in line and "v7" in line
    first = output.read_bytes()
    assert run_push(*args, *support.image_args(built)).code == 0
    assert output.read_bytes() == first  # no timestamps or timings: IaC sees no change


def test_a_layout_with_several_platforms_needs_platform(
    open_registry, tmp_path, run_push
):
    layer = support.layer_bytes({"var/task/handler.py": b"x = 1\n"})
    arm = support.write_image(tmp_path / "multi", [layer], architecture="arm64")
    amd = support.write_image(tmp_path / "amd", [layer], architecture="amd64")
    for blob in (amd.layout / "blobs" / "sha256").iterdir():
        (tmp_path / "multi" / "blobs" / "sha256" / blob.name).write_bytes(
            blob.read_bytes()
        )
    index = json.loads((tmp_path / "multi" / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": client.OCI_MANIFEST,
            "digest": amd.digest,
            "size": len(amd.manifest),
        }
    )
    (tmp_path / "multi" / "index.json").write_text(json.dumps(index))

    args = ["--registry", open_registry.address, f"--image=fn={tmp_path / 'multi'}"]
    ambiguous = run_push(*args)
    assert (
        ambiguous.code == 2
        and "holds several images (linux/amd64, linux/arm64)" in ambiguous.stderr
    )
    chosen = run_push(*args, "--platform", "linux/amd64")
    assert chosen.code == 0 and chosen.results[0].image.digest == amd.digest
    _, media_type, _ = open_registry.client().get_manifest("fn", amd.digest)
    assert (
        media_type == client.OCI_MANIFEST
    )  # a single-architecture manifest, never an index
    assert arm.digest != amd.digest


def test_zstd_layers_are_refused_because_lambda_rejects_them(
    open_registry, tmp_path, run_push
):
    image = support.write_image(tmp_path / "zstd", [support.layer_bytes({"a": b"a"})])
    manifest = json.loads(image.manifest)
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    data = json.dumps(manifest).encode()
    digest = client.sha256_digest(data)
    (image.layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": client.OCI_MANIFEST, "digest": digest, "size": len(data)}
        ],
    }
    (image.layout / "index.json").write_text(json.dumps(index))
    run = run_push("--registry", open_registry.address, f"--image=fn={image.layout}")
    assert run.code == 2 and "AWS Lambda rejects" in run.stderr


def test_a_corrupt_layout_blob_is_never_uploaded(open_registry, images, run_push):
    image = images.build("similarity")
    handler_blob = image.layout / "blobs" / "sha256" / image.layer_digests[2][7:]
    data = bytearray(handler_blob.read_bytes())
    data[-1] ^= 0xFF
    handler_blob.write_bytes(bytes(data))
    run = run_push(
        "--registry", open_registry.address, f"--image=similarity={image.layout}"
    )
    assert run.code == 1
    assert f"does not hash to {image.layer_digests[2]}" in run.stderr
    assert (
        open_registry.client().blob_size("similarity", image.layer_digests[2]) is None
    )
