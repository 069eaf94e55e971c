"""What the layers of the six handler images hold (linux/arm64 and linux/amd64): the runtime, binaries
of the right architecture, normalized entries with nothing of the build machine in them, layers
shared by all six images, and what an edit of one handler.py changes."""

from __future__ import annotations

import functools
import io
import os
import re
import socket
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.images.images import (
    HANDLERS,
    PLATFORM_MACHINES,
    elf_machine,
    gzip_header,
    image,
    images,
    members,
)

ARCHITECTURES = ("arm64", "amd64")
SITE_PACKAGES = "usr/local/lib/python3.13/dist-packages/"
FIXED_EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
TEXT_LIMIT = (
    4 << 20
)  # text files larger than this are data, not something a build writes
ALLOWED_PAX_KEYS = {
    "path",
    "linkpath",
}  # long names only: no times, owners or charset of the host
ALLOWED_TYPES = {tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE}
# Credentials in the shapes that leak: AWS key ids and secrets, OpenAI keys, private keys.
SECRET_PATTERNS = {
    "AWS access key id": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        rb"(?i)aws_secret_access_key\s*[=:]\s*[\"']?([A-Za-z0-9/+]{40})\b"
    ),
    "OpenAI API key": re.compile(rb"\bsk-[A-Za-z0-9_-]*T3BlbkFJ[A-Za-z0-9_-]*"),
    "OpenAI key assignment": re.compile(
        rb"OPENAI_API_KEY\s*=\s*[\"']?sk-[A-Za-z0-9_-]{16,}"
    ),
    "private key": re.compile(
        rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
    ),
}
# AWS's documented placeholder credentials, which boto3's and botocore's docs quote.
EXAMPLE_CREDENTIAL = re.compile(rb"EXAMPLE")
# Third-party files that quote a made-up key in their documentation examples.
EXAMPLE_KEY_FILES = {SITE_PACKAGES + "botocore/data/iam/2010-05-08/examples-1.json"}
# The repository's own test key (tests/pipeline/fake_openai.py): tests must never land in an image.
PROJECT_TEST_SECRETS = [b"sk-test-fake-openai-key-do-not-log"]
CREDENTIAL_FILES = re.compile(
    r"(^|/)(\.aws/credentials|\.aws/config|\.netrc|\.pypirc|\.npmrc|\.git-credentials|\.env|id_rsa|id_ed25519"
    r"|\.docker/config\.json|\.git)$"
)


def build_machine_strings() -> dict[str, bytes]:
    """Paths of this build that must not appear in any layer: Bazel's directory names, this test's
    working directory and, when it runs in a local output base, that output base and its parent
    (the output user root) and the work tree."""
    here = os.getcwd()
    needles = {
        "bazel-out": "/bazel-out/",
        "execroot": "/execroot/",
        "sandbox": "/sandbox/linux-sandbox/",
        "test working directory": here + "/",
    }
    # Locally the test runs under <output base>/execroot/ or <output base>/sandbox/; under remote
    # execution it runs wherever the worker puts it, and there is no output base to name.
    output_base = re.split(r"/(?:sandbox|execroot)/", here)[0]
    if output_base != here:
        needles["output base"] = output_base
        needles["output user root"] = os.path.dirname(output_base)
    # The work tree, through the symlink chain runfiles -> execroot -> source file (locally).
    source = Path("handlers/list_pending_batches/handler.py").resolve()
    workspace = str(source.parents[2])
    if not workspace.startswith((output_base, here)) and len(workspace) >= 8:
        needles["work tree"] = workspace + "/"
    return {what: text.encode() for what, text in needles.items()}


LEAKS = build_machine_strings()
# A host name only means something as a whole token; a very short one ("vm") is everywhere in data.
HOSTNAME = socket.gethostname()
HOSTNAME_PATTERN = (
    re.compile(
        rb"(?<![A-Za-z0-9_.-])" + re.escape(HOSTNAME.encode()) + rb"(?![A-Za-z0-9_-])"
    )
    if len(HOSTNAME) >= 6 and HOSTNAME != "localhost"
    else None
)


@dataclass
class LayerFacts:
    """Everything the tests ask about one layer blob, gathered in one pass."""

    entries: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    contents: dict[str, bytes] = field(
        default_factory=dict
    )  # small files the tests read back
    problems: list[str] = field(default_factory=list)
    elf: dict[str, str] = field(default_factory=dict)
    wheel_tags: dict[str, list[str]] = field(default_factory=dict)
    pyc: list[tuple[str, int, int, int]] = field(
        default_factory=list
    )  # name, flags, mtime, source size
    names_in_order: list[str] = field(default_factory=list)


def check_header(info: tarfile.TarInfo, facts: LayerFacts) -> None:
    name = info.name
    if info.type not in ALLOWED_TYPES:
        facts.problems.append(f"{name}: entry type {info.type!r}")
    if (info.mtime, info.uid, info.gid, info.uname, info.gname) != (
        FIXED_EPOCH,
        0,
        0,
        "",
        "",
    ):
        facts.problems.append(
            f"{name}: mtime {info.mtime} uid {info.uid} gid {info.gid} uname {info.uname!r} gname {info.gname!r}"
        )
    if set(info.pax_headers) - ALLOWED_PAX_KEYS:
        facts.problems.append(f"{name}: pax headers {sorted(info.pax_headers)}")
    if not info.issym() and info.mode & 0o444 != 0o444:
        facts.problems.append(f"{name}: mode {info.mode:o} is not readable by everyone")
    if info.mode & 0o6000:
        facts.problems.append(f"{name}: setuid/setgid mode {info.mode:o}")
    header_text = " ".join([name, info.linkname, *info.pax_headers.values()]).encode()
    for what, needle in LEAKS.items():
        if needle in header_text:
            facts.problems.append(f"{name}: the tar header names the {what}")
    if HOSTNAME_PATTERN and HOSTNAME_PATTERN.search(header_text):
        facts.problems.append(f"{name}: the tar header names the build host {HOSTNAME}")
    if CREDENTIAL_FILES.search(name):
        facts.problems.append(f"{name}: a credentials or VCS file")


def check_content(name: str, content: bytes, facts: LayerFacts) -> None:
    for (
        what,
        needle,
    ) in LEAKS.items():  # binaries too: a .pyc keeps the path it was compiled from
        if needle in content:
            facts.problems.append(f"{name}: names the {what} ({needle.decode()})")
    for secret in PROJECT_TEST_SECRETS:
        if secret in content:
            facts.problems.append(f"{name}: holds the repository's test API key")
    machine = elf_machine(content)
    if machine:
        facts.elf[name] = machine
    if name.endswith(".pyc") and len(content) >= 16:
        flags, mtime, size = (
            int.from_bytes(content[offset : offset + 4], "little")
            for offset in (4, 8, 12)
        )
        facts.pyc.append((name, flags, mtime, size))
    if len(content) > TEXT_LIMIT or b"\0" in content[:8192]:
        return
    if HOSTNAME_PATTERN and HOSTNAME_PATTERN.search(content):
        facts.problems.append(f"{name}: names the build host {HOSTNAME}")
    searched = content
    if name.endswith(
        ".dist-info/RECORD"
    ):  # only the path column: hashes are random base64
        searched = b"\n".join(line.split(b",", 1)[0] for line in content.splitlines())
    for what, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(searched):
            if what == "private key" and name in EXAMPLE_KEY_FILES:
                continue
            if not EXAMPLE_CREDENTIAL.search(match.group(0)):
                facts.problems.append(
                    f"{name}: looks like an {what}: {match.group(0)[:12]!r}..."
                )
    if name.endswith(".dist-info/WHEEL"):
        facts.wheel_tags[name] = [
            line.split(":", 1)[1].strip()
            for line in content.decode().splitlines()
            if line.startswith("Tag:")
        ]


@functools.cache
def layer_facts(blob: Path) -> LayerFacts:
    facts = LayerFacts()
    for info, content in members(blob):
        facts.names_in_order.append(info.name)
        facts.entries[info.name] = info
        check_header(info, facts)
        if content is not None:
            check_content(info.name, content, facts)
            if info.name.startswith("var/task/") or info.name == "usr/bin/python3.13":
                facts.contents[info.name] = (
                    content[:64] if info.name.startswith("usr/") else content
                )
    return facts


def unique_layers(arch: str) -> dict[str, Path]:
    """Digest -> blob of every layer of the six images and the edited one (arm64)."""
    variants = images(arch) + (
        [image("edited_arm64", "edited")] if arch == "arm64" else []
    )
    return {
        layer["digest"]: found.blob(layer["digest"])
        for found in variants
        for layer in found.layers
    }


def all_facts(arch: str) -> dict[str, LayerFacts]:
    return {digest: layer_facts(blob) for digest, blob in unique_layers(arch).items()}


# The runtime and the architecture


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_runtime_layer_has_the_interpreter_as_a_real_file(arch):
    runtime = layer_facts(image(arch, "list_pending_batches").layer_blobs()[0])
    interpreter = runtime.entries["usr/bin/python3.13"]
    assert interpreter.isreg(), "Lambda needs the entrypoint to be a file, not a link"
    assert interpreter.mode == 0o755
    assert elf_machine(runtime.contents["usr/bin/python3.13"]) == arch
    assert runtime.entries["usr/bin/python3"].linkname == "python3.13"
    assert runtime.entries["var/task"].isdir()
    assert runtime.entries["tmp"].mode == 0o1777


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_binary_is_built_for_the_image_architecture(arch):
    machines = Counter()
    wrong = []
    for facts in all_facts(arch).values():
        for name, machine in facts.elf.items():
            machines[machine] += 1
            if machine != arch:
                wrong.append(f"{name}: {machine}")
    assert wrong == []
    assert machines[arch] > 100, (
        f"expected the runtime's and the wheels' shared objects, found {machines}"
    )
    numpy_core = [
        name
        for facts in all_facts(arch).values()
        for name in facts.elf
        if name.startswith(SITE_PACKAGES + "numpy/_core/_multiarray_umath.cpython-313-")
    ]
    assert numpy_core == [
        f"{SITE_PACKAGES}numpy/_core/_multiarray_umath.cpython-313-{PLATFORM_MACHINES[arch]}-linux-gnu.so"
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_wheels_are_the_ones_for_the_image_architecture(arch):
    tags = {
        name: found
        for facts in all_facts(arch).values()
        for name, found in facts.wheel_tags.items()
    }
    platform_specific = {
        name: found
        for name, found in tags.items()
        if any(not t.endswith("-any") for t in found)
    }
    assert len(tags) > 50, "expected the dist-info of every installed wheel"
    for distribution in (
        "numpy",
        "onnxruntime",
        "tokenizers",
        "grpcio",
        "chromadb",
        "awslambdaric",
    ):
        assert any(
            name.startswith(f"{SITE_PACKAGES}{distribution}-")
            for name in platform_specific
        ), distribution
    for name, found in platform_specific.items():
        assert all(tag.endswith(PLATFORM_MACHINES[arch]) for tag in found), (
            f"{name}: {found}"
        )


# Normalization and leaks


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_entries_are_normalized_and_nothing_of_the_build_machine_leaks(arch):
    problems = [
        problem for facts in all_facts(arch).values() for problem in facts.problems
    ]
    assert problems == []


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layers_are_sorted_tars_in_timestamp_free_gzip(arch):
    for digest, blob in unique_layers(arch).items():
        header = gzip_header(blob)
        assert header == {"magic": 0x8B1F, "method": 8, "flags": 0, "mtime": 0}, (
            f"{digest}: {header}"
        )
        names = layer_facts(blob).names_in_order
        assert names == sorted(names), digest
        assert len(names) == len(set(names)), f"{digest} has an entry twice"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_compiled_python_is_never_stale(arch):
    """Timestamp .pyc files record their source's mtime and size: both must match the layer's
    (fixed) ones, or Python recompiles at every cold start on Lambda's read-only file system."""
    entries = {
        name: info
        for facts in all_facts(arch).values()
        for name, info in facts.entries.items()
    }
    pycs = [pyc for facts in all_facts(arch).values() for pyc in facts.pyc]
    assert len(pycs) > 100, "the runtime ships the standard library compiled"
    for name, flags, mtime, size in pycs:
        if flags & 1:  # hash-based: no timestamp at all
            continue
        assert flags == 0, f"{name}: flags {flags}"
        directory, _, file_name = name.rpartition("/__pycache__/")
        source = entries.get(f"{directory}/{file_name.split('.', 1)[0]}.py")
        assert source is not None, f"{name} has no source"
        assert (mtime, size) == (FIXED_EPOCH, source.size), name


def planted_facts(tmp_path: Path, name: str, content: bytes, **header) -> LayerFacts:
    """The checks above, run on a layer with something planted, must report it."""
    blob = tmp_path / f"planted-{len(list(tmp_path.iterdir()))}.tar.gz"
    with tarfile.open(blob, "w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(content), 0o644, FIXED_EPOCH
        for key, value in header.items():
            setattr(info, key, value)
        archive.addfile(info, io.BytesIO(content))
    return layer_facts(blob)


def test_the_leak_checks_find_what_is_planted(tmp_path):
    key = b"sk-proj-" + b"A" * 20 + b"T3BlbkFJ" + b"B" * 20
    cases = [
        ("usr/lib/x.py", b"PATH = '" + LEAKS["test working directory"] + b"x'\n", {}),
        (
            "usr/lib/x.pyc",
            b"\0\0\0\0" + LEAKS["bazel-out"] + b"k8-fastbuild/bin/x.py",
            {},
        ),
        ("usr/lib/y.py", b"key = '" + key + b"'\n", {}),
        ("usr/lib/z.py", b"aws_secret_access_key = " + b"Q" * 40 + b"\n", {}),
        ("usr/lib/w.py", b"AKIA" + b"Q" * 16 + b"\n", {}),
        ("usr/lib/u.py", b"x", {"uname": "builder"}),
        ("usr/lib/t.py", b"x", {"mtime": int(time.time())}),
        ("root/.aws/credentials", b"", {}),
    ]
    if HOSTNAME_PATTERN:
        cases.append(("etc/built-on", b"built on " + HOSTNAME.encode() + b"\n", {}))
    for name, content, header in cases:
        assert planted_facts(tmp_path, name, content, **header).problems, (
            f"{name} {header} went unnoticed"
        )
    assert (
        planted_facts(tmp_path, "usr/lib/ok.py", b"AKIAIOSFODNN7EXAMPLE\n").problems
        == []
    )


# Sharing and incrementality


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_six_images_share_every_layer_but_the_handler(arch):
    variants = images(arch)
    shared = [found.layers[:-1] for found in variants]
    assert all(layers == shared[0] for layers in shared), (
        "base and dependency layers differ between images"
    )
    assert len(shared[0]) == 6
    handler_layers = {found.layers[-1]["digest"] for found in variants}
    assert len(handler_layers) == 6, "each image has a handler layer of its own"


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", HANDLERS)
def test_the_handler_layer_is_exactly_the_handler_file(arch, name):
    facts = layer_facts(image(arch, name).layer_blobs()[-1])
    assert {entry: info.type for entry, info in facts.entries.items()} == {
        "var": tarfile.DIRTYPE,
        "var/task": tarfile.DIRTYPE,
        "var/task/handler.py": tarfile.REGTYPE,
    }
    assert facts.entries["var/task/handler.py"].mode == 0o644
    assert (
        facts.contents["var/task/handler.py"]
        == Path(f"handlers/{name}/handler.py").read_bytes()
    )


def test_editing_one_handler_changes_only_its_handler_layer_config_and_manifest():
    """//tests/images/edited: list_pending_batches' handler.py with one comment line added, built by
    the same lambda_image macro."""
    original, edited = (
        image("arm64", "list_pending_batches"),
        image("edited_arm64", "edited"),
    )
    assert edited.layers[:-1] == original.layers[:-1], (
        "a base or dependency layer was rebuilt differently"
    )
    assert edited.layers[-1]["digest"] != original.layers[-1]["digest"]
    assert edited.manifest["config"]["digest"] != original.manifest["config"]["digest"]
    assert edited.digest != original.digest
    # The config differs in the handler layer's diff_id and history entry, and nothing else.
    config, edited_config = original.config, edited.config
    assert edited_config["rootfs"]["diff_ids"][:-1] == config["rootfs"]["diff_ids"][:-1]
    assert edited_config["history"][:-1] == config["history"][:-1]
    assert {
        key: value
        for key, value in edited_config.items()
        if key not in ("rootfs", "history")
    } == {
        key: value for key, value in config.items() if key not in ("rootfs", "history")
    }
    source = Path("handlers/list_pending_batches/handler.py").read_bytes()
    edited_source = layer_facts(edited.layer_blobs()[-1]).contents[
        "var/task/handler.py"
    ]
    assert (
        edited_source.startswith(source)
        and edited_source[len(source) :].count(b"\n") == 1
    )
    assert edited_source[len(source) :].startswith(b"# ")
