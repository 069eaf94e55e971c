"""Pushes where part of the work fails: a manifest the registry accepts but does not serve, and
some images failing while the others go up. Tags never point at a half-done release."""

from __future__ import annotations

import json

from tests.push import support

HANDLERS = support.HANDLERS


def test_a_manifest_accepted_but_not_served_back_fails_and_sets_no_tag(
    open_registry, images, run_push
):
    image = images.build("similarity")
    proxy = support.FaultProxy(open_registry.server.port)
    # Both HEADs of the manifest by digest, before and after its PUT, answer "unknown".
    proxy.faults = [support.Fault("HEAD", "/manifests/sha256:", "404", times=2)]
    try:
        run = run_push(
            "--registry",
            proxy.url,
            "--tag",
            "release",
            f"--image=similarity={image.layout}",
        )
    finally:
        proxy.close()
    assert run.code == 1, run.stderr
    assert (
        f"accepted manifest {image.digest} of similarity but does not serve it; no tag was set"
        in run.stderr
    )
    assert proxy.faults[0].hits == 2
    assert ("PUT", f"/v2/similarity/manifests/{image.digest}") in proxy.requests
    assert not any("/manifests/release" in path for _, path in proxy.requests)
    assert open_registry.client().manifest_digest("similarity", "release") is None


def test_some_images_failing_leaves_every_tag_alone_and_says_which(
    open_registry, images, run_push, tmp_path
):
    built = {name: images.build(name) for name in HANDLERS[:3]}
    failing = HANDLERS[1]
    proxy = support.FaultProxy(open_registry.server.port)
    proxy.faults = [
        support.Fault("PUT", f"/v2/{failing}/manifests/", "500", times=1000)
    ]
    references = tmp_path / "references.json"
    try:
        run = run_push(
            "--registry",
            proxy.url,
            "--retries",
            "1",
            "--tag",
            "release",
            "--output-json",
            str(references),
            *support.image_args(built),
        )
    finally:
        proxy.close()
    assert run.code == 1, run.stderr
    results = run.by_name()
    assert results[failing].error and "HTTP 500" in results[failing].error
    assert [name for name, result in results.items() if result.error] == [failing]
    assert (
        f"1 of 3 images failed ({failing}), so no tag was set or moved on any image"
        in run.stderr
    )
    assert "Traceback" not in run.stderr
    table = {line.split()[0]: line for line in run.stdout.splitlines() if line}
    assert "FAILED" in table[failing]
    regclient = open_registry.client()
    for name, image in built.items():
        assert regclient.manifest_digest(name, "release") is None, name
        if name != failing:
            # In place by digest, so the next push only tags them.
            assert regclient.manifest_digest(name, image.digest) == image.digest
            assert table[name].rstrip().endswith("not set"), table[name]
    written = json.loads(references.read_text())["images"]
    assert sorted(written) == sorted(set(built) - {failing})
    assert all(entry["tags"] == [] for entry in written.values())

    again = run_push(
        "--registry",
        open_registry.address,
        "--tag",
        "release",
        *support.image_args(built),
    )
    assert again.code == 0, again.stderr
    for name, image in built.items():
        assert regclient.manifest_digest(name, "release") == image.digest
    assert again.by_name()[HANDLERS[0]].uploaded == len(built[HANDLERS[0]].manifest)
