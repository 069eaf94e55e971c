"""Tests of tools/oci/layer.py: normalization, determinism, compression, inputs and their errors."""

import gzip
import hashlib
import importlib.util
import io
import marshal
import os
import sys
import tarfile

import pytest

from tools.oci import compressors, layer
from tools.oci.common import UsageError
from tools.oci.tests.oci_testing import (
    make_layer,
    sha256_file,
    tar_bytes,
    tar_members,
)


def write(path, content, mode=0o644, mtime=1_700_000_000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))
    return str(path)


def tar_file(path, members, compress=False):
    """Writes a tar from (TarInfo fields dict, content) pairs, the way a careless packer would."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for fields, content in members:
            info = tarfile.TarInfo(fields.pop("name"))
            info.uid, info.gid, info.uname, info.gname = 1000, 1000, "alice", "staff"
            info.mtime = 1_700_000_000
            for key, value in fields.items():
                setattr(info, key, value)
            if content is not None:
                info.size = len(content)
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    data = buffer.getvalue()
    with open(path, "wb") as handle:
        handle.write(gzip.compress(data, mtime=123) if compress else data)
    return str(path)


def test_files_are_normalized_sorted_and_get_parent_directories(tmp_path):
    source = write(tmp_path / "src" / "app.py", b"print('hi')\n", mode=0o600)
    script = write(tmp_path / "src" / "run", b"#!/bin/sh\n", mode=0o700)
    _, _, blob = make_layer(
        tmp_path,
        "layer",
        "--file", "/var/task/app.py", source,
        "--file", "usr/local/bin/run", script,
        "--mode", "/usr/local/bin/run", "0755",
        "--symlink", "/usr/bin/run", "../local/bin/run",
        "--dir", "/tmp",
        "--mode", "/tmp", "1777",
    )  # fmt: skip
    members = tar_members(blob)
    assert list(members) == sorted(members)
    assert list(members) == [
        "tmp",
        "usr",
        "usr/bin",
        "usr/bin/run",
        "usr/local",
        "usr/local/bin",
        "usr/local/bin/run",
        "var",
        "var/task",
        "var/task/app.py",
    ]
    modes = {name: info.mode for name, (info, _) in members.items()}
    assert modes["var/task/app.py"] == 0o644  # host mode 0600 is not carried over
    assert modes["usr/local/bin/run"] == 0o755
    assert modes["var"] == modes["var/task"] == 0o755
    assert modes["tmp"] == 0o1777
    for info, _ in members.values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
    assert members["usr/bin/run"][0].linkname == "../local/bin/run"
    assert members["var/task/app.py"][1] == b"print('hi')\n"


def test_a_directory_source_is_copied_recursively(tmp_path):
    write(tmp_path / "tree" / "a.txt", b"a")
    write(tmp_path / "tree" / "sub" / "b.txt", b"b")
    os.makedirs(tmp_path / "tree" / "empty")
    _, _, blob = make_layer(
        tmp_path, "layer", "--file", "/opt/tree", str(tmp_path / "tree")
    )
    assert list(tar_members(blob)) == [
        "opt",
        "opt/tree",
        "opt/tree/a.txt",
        "opt/tree/empty",
        "opt/tree/sub",
        "opt/tree/sub/b.txt",
    ]


def test_same_inputs_elsewhere_give_the_same_digest(tmp_path):
    """Host paths, mtimes and permissions must not leak into the layer."""
    digests = set()
    for index, (mode, mtime) in enumerate([(0o600, 1), (0o664, 2_000_000_000)]):
        source = write(tmp_path / f"in{index}" / "x.bin", b"x" * 3_000_000, mode, mtime)
        metadata, _, blob = make_layer(
            tmp_path / f"out{index}", "layer", "--file", "/x.bin", source
        )
        digests.add(
            (metadata["descriptor"]["digest"], metadata["diff_id"], sha256_file(blob))
        )
    assert len(digests) == 1


def test_metadata_describes_the_blob(tmp_path):
    source = write(tmp_path / "a.txt", b"hello\n")
    metadata, _, blob = make_layer(
        tmp_path,
        "layer",
        "--file",
        "/a.txt",
        source,
        "--created-by",
        "files of //x:y",
        "--comment",
        "why",
    )
    assert metadata["descriptor"] == {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": sha256_file(blob),
        "size": os.path.getsize(blob),
    }
    assert (
        metadata["diff_id"] == "sha256:" + hashlib.sha256(tar_bytes(blob)).hexdigest()
    )
    assert metadata["history"] == {
        "created": "1970-01-01T00:00:00Z",
        "created_by": "files of //x:y",
        "comment": "why",
    }


def test_gzip_header_has_no_name_or_timestamp(tmp_path):
    source = write(tmp_path / "a.txt", b"hello\n")
    _, _, blob = make_layer(tmp_path, "layer", "--file", "/a.txt", source)
    with open(blob, "rb") as handle:
        header = handle.read(10)
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] == 0  # no FNAME / FCOMMENT / FEXTRA flags
    assert header[4:8] == b"\0\0\0\0"  # mtime 0


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressed_bytes_do_not_depend_on_how_the_tar_is_written(
    tmp_path, compression
):
    """A compressor's output may depend on how input is split into calls: the chunker hides that."""
    content = b"".join(os.urandom(1000) + b"abc" * 100_000 for _ in range(8))
    blobs = []
    for write_size in (512, 10_240, 3_000_001):
        sink = io.BytesIO()
        writer = compressors.ChunkedCompressor(sink, compressors.new(compression, 1))
        for start in range(0, len(content), write_size):
            writer.write(content[start : start + write_size])
        writer.close()
        blobs.append(sink.getvalue())
    assert blobs[0] == blobs[1] == blobs[2]
    (tmp_path / "blob").write_bytes(blobs[0])
    assert tar_bytes(tmp_path / "blob") == content


def test_source_date_epoch_sets_mtime_and_created(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = write(tmp_path / "a.txt", b"a")
    metadata, _, blob = make_layer(tmp_path, "layer", "--file", "/a.txt", source)
    assert tar_members(blob)["a.txt"][0].mtime == 1_700_000_000
    assert metadata["history"]["created"] == "2023-11-14T22:13:20Z"


def test_bad_source_date_epoch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        make_layer(tmp_path, "layer", "--dir", "/x")


@pytest.mark.parametrize(
    ("compression", "media_type"), [("zstd", "tar+zstd"), ("none", "tar")]
)
def test_other_compressions(tmp_path, compression, media_type):
    source = write(tmp_path / "a.bin", b"z" * 5_000_000)
    metadata, _, blob = make_layer(
        tmp_path, "layer", "--file", "/a.bin", source, "--compression", compression
    )
    assert tar_members(blob)["a.bin"][1] == b"z" * 5_000_000
    assert metadata["descriptor"]["mediaType"] == (
        "application/vnd.oci.image.layer.v1." + media_type
    )
    assert metadata["descriptor"]["digest"] == sha256_file(blob)


def test_tar_input_is_renormalized(tmp_path):
    source = tar_file(
        tmp_path / "rootfs.tar.gz",
        [
            ({"name": "./usr/bin/python3.13", "mode": 0o4711}, b"ELF"),
            ({"name": "./usr/lib/secret", "mode": 0o600}, b"data"),
            ({"name": "./tmp", "type": tarfile.DIRTYPE, "mode": 0o1777}, None),
            ({"name": "./etc", "type": tarfile.DIRTYPE, "mode": 0o700}, None),
            (
                {
                    "name": "./usr/bin/python3",
                    "type": tarfile.SYMTYPE,
                    "linkname": "python3.13",
                },
                None,
            ),
            # the link sorts before its target: the layer must swap them
            (
                {
                    "name": "./usr/bin/a-hardlink",
                    "type": tarfile.LNKTYPE,
                    "linkname": "./usr/bin/python3.13",
                },
                None,
            ),
        ],
        compress=True,
    )
    _, _, blob = make_layer(tmp_path, "layer", "--tar", source)
    members = tar_members(blob)
    assert list(members) == ["etc", "tmp", "usr", "usr/bin", "usr/bin/a-hardlink", "usr/bin/python3",
                             "usr/bin/python3.13", "usr/lib", "usr/lib/secret"]  # fmt: skip
    info = {name: member for name, (member, _) in members.items()}
    assert (
        info["usr/bin/a-hardlink"].isreg()
        and members["usr/bin/a-hardlink"][1] == b"ELF"
    )
    assert (
        info["usr/bin/python3.13"].islnk()
        and info["usr/bin/python3.13"].linkname == "usr/bin/a-hardlink"
    )
    assert info["usr/bin/a-hardlink"].mode == 0o755  # setuid dropped, execute kept
    assert info["usr/lib/secret"].mode == 0o644  # readable by any user
    assert info["etc"].mode == 0o755
    assert info["tmp"].mode == 0o1777
    assert (
        info["usr/bin/python3"].issym()
        and info["usr/bin/python3"].linkname == "python3.13"
    )
    for member in info.values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )


def test_compressed_and_plain_tar_inputs_give_the_same_layer(tmp_path):
    members = [({"name": "a/b.txt"}, b"b"), ({"name": "a/c.txt"}, b"c")]
    plain = tar_file(
        tmp_path / "in.tar", [(dict(fields), content) for fields, content in members]
    )
    packed = tar_file(
        tmp_path / "in.tgz",
        [(dict(fields), content) for fields, content in members],
        compress=True,
    )
    first, _, _ = make_layer(tmp_path / "1", "layer", "--tar", plain)
    second, _, _ = make_layer(tmp_path / "2", "layer", "--tar", packed)
    assert first == second


def test_device_files_are_rejected(tmp_path):
    source = tar_file(
        tmp_path / "dev.tar", [({"name": "dev/null", "type": tarfile.CHRTYPE}, None)]
    )
    with pytest.raises(UsageError, match="dev/null is a device"):
        make_layer(tmp_path, "layer", "--tar", source)


def test_hard_link_without_target_is_rejected(tmp_path):
    source = tar_file(
        tmp_path / "l.tar",
        [({"name": "a", "type": tarfile.LNKTYPE, "linkname": "missing"}, None)],
    )
    with pytest.raises(UsageError, match="hard link /a .* points to /missing"):
        make_layer(tmp_path, "layer", "--tar", source)


def test_conflicting_inputs_are_an_error_unless_overwrites_are_allowed(tmp_path):
    first = write(tmp_path / "one" / "x", b"one")
    second = write(tmp_path / "two" / "x", b"two")
    same = write(tmp_path / "three" / "x", b"one")
    with pytest.raises(
        UsageError, match="/etc/x comes from both .* with different contents"
    ):
        make_layer(
            tmp_path, "layer", "--file", "/etc/x", first, "--file", "/etc/x", second
        )
    _, _, blob = make_layer(
        tmp_path, "same", "--file", "/etc/x", first, "--file", "/etc/x", same
    )
    assert tar_members(blob)["etc/x"][1] == b"one"
    _, _, blob = make_layer(
        tmp_path,
        "over",
        "--file",
        "/etc/x",
        first,
        "--file",
        "/etc/x",
        second,
        "--allow-overwrite",
    )
    assert tar_members(blob)["etc/x"][1] == b"two"


def test_a_path_under_a_file_is_an_error(tmp_path):
    source = write(tmp_path / "x", b"x")
    with pytest.raises(UsageError, match="lies under /etc/x"):
        make_layer(
            tmp_path, "layer", "--file", "/etc/x", source, "--file", "/etc/x/y", source
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--file", "/../etc/passwd", "SRC"], "contains '..'"),
        (
            ["--file", "/a", "/nonexistent/file"],
            "input file /nonexistent/file does not exist",
        ),
        (["--tar", "/nonexistent.tar"], "input tar /nonexistent.tar does not exist"),
        (
            ["--file", "/a", "SRC", "--mode", "/b", "0755"],
            "--mode names /b, which is not in the layer",
        ),
        (["--file", "/a", "SRC", "--mode", "/a", "rwx"], "the mode must be octal"),
        (["--symlink", "/a", ""], "symlink /a has an empty target"),
    ],
)
def test_bad_arguments_name_the_problem(tmp_path, args, message):
    source = write(tmp_path / "src", b"s")
    with pytest.raises(UsageError, match=message):
        make_layer(
            tmp_path, "layer", *[source if arg == "SRC" else arg for arg in args]
        )
    assert not os.path.exists(tmp_path / "layer.tar.gz")


def test_long_and_non_ascii_paths_round_trip(tmp_path):
    long_name = "/".join(["d" * 60] * 4) + "/ünïcode.txt"
    source = write(tmp_path / "f", b"f")
    _, _, blob = make_layer(tmp_path, "layer", "--file", long_name, source)
    assert tar_members(blob)[long_name][1] == b"f"


def python_files(tmp_path, short_paths):
    pairs = []
    for short_path in short_paths:
        pairs += [
            "--py-file",
            short_path,
            write(tmp_path / "in" / short_path.replace("../", "ext/"), b"#"),
        ]
    return pairs


PY_FILES = [
    "../pypi_numpy/site-packages/numpy/__init__.py",
    "../pypi_numpy/site-packages/numpy-2.0.dist-info/RECORD",
    "../pypi_six/site-packages/six.py",  # import root not declared: found by the site-packages/ marker
    "packages/receipt_dynamo/receipt_dynamo/__init__.py",  # import root packages/receipt_dynamo
    "tools/oci/common.py",  # no import root: relative to the repository root
]


def test_python_files_land_in_site_packages(tmp_path):
    _, _, blob = make_layer(
        tmp_path,
        "layer",
        *python_files(tmp_path, PY_FILES),
        "--py-import-root", "pypi_numpy/site-packages",
        "--py-import-root", "_main/packages/receipt_dynamo",
    )  # fmt: skip
    files = [name for name, (info, _) in tar_members(blob).items() if info.isreg()]
    site = "usr/local/lib/python3.13/dist-packages/"
    assert files == [
        site + "numpy-2.0.dist-info/RECORD",
        site + "numpy/__init__.py",
        site + "receipt_dynamo/__init__.py",
        site + "six.py",
        site + "tools/oci/common.py",
    ]


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        ("third_party", ["numpy/__init__.py", "six.py"]),
        ("first_party", ["receipt_dynamo/__init__.py", "tools/oci/common.py"]),
    ],
)
def test_python_files_can_be_split_and_excluded(tmp_path, include, expected):
    _, _, blob = make_layer(
        tmp_path,
        "layer",
        *python_files(tmp_path, PY_FILES),
        "--py-import-root", "pypi_numpy/site-packages",
        "--py-import-root", "_main/packages/receipt_dynamo",
        "--py-include", include,
        "--py-exclude", "../pypi_numpy/site-packages/numpy-2.0.dist-info/RECORD",
        "--py-site-packages", "/opt/python",
    )  # fmt: skip
    files = [name for name, (info, _) in tar_members(blob).items() if info.isreg()]
    assert files == ["opt/python/" + path for path in expected]


def test_layer_entries_api_sorts_without_writing(tmp_path):
    entries = layer.Layer()
    entries.add_dir("/b/c")
    entries.add_symlink("/a", "b")
    assert [entry.path for entry in entries.finalized_entries()] == ["a", "b", "b/c"]


RUNNING_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SITE = "usr/local/lib/python3.13/dist-packages/"
PYC = f"__pycache__/mod.{sys.implementation.cache_tag}.pyc"
COMPILED_FILES = {
    "../pypi_x/site-packages/x/mod.py": b"VALUE = 'compiled'\n",
    "../pypi_x/site-packages/x/py2_only.py": b"print 'python 2'\n",
    "../pypi_x/site-packages/x/data.txt": b"not python\n",
    "pkg/mod.py": b"def f():\n    return 42\n",
}


def compiled_layer(tmp_path, *args):
    pairs = []
    for short_path, content in COMPILED_FILES.items():
        pairs += [
            "--py-file",
            short_path,
            write(tmp_path / "in" / short_path.replace("../", "ext/"), content),
        ]
    _, _, blob = make_layer(
        tmp_path, "layer", *pairs, "--py-compile", RUNNING_PYTHON, *args
    )
    return tar_members(blob), blob


def test_compiled_python_gets_a_pyc_next_to_each_py_file(tmp_path):
    members, _ = compiled_layer(tmp_path)
    files = [name for name, (info, _) in members.items() if info.isreg()]
    assert files == [
        SITE + "pkg/" + PYC,
        SITE + "pkg/mod.py",
        SITE + "x/" + PYC,
        SITE + "x/data.txt",
        SITE + "x/mod.py",
        SITE + "x/py2_only.py",  # does not compile: no .pyc, and no error
    ]
    assert list(members) == sorted(members)
    for name in (SITE + "x/" + PYC, SITE + "x/__pycache__"):
        info = members[name][0]
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
        assert info.mode == (0o755 if info.isdir() else 0o644)


def test_pyc_is_hash_based_and_names_the_image_path(tmp_path):
    members, _ = compiled_layer(tmp_path)
    pyc = members[SITE + "x/" + PYC][1]
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    flags = int.from_bytes(pyc[4:8], "little")
    assert (
        flags == 0b01
    )  # hash-based, unchecked: no mtime, never compared with the source
    assert pyc[8:16] == importlib.util.source_hash(b"VALUE = 'compiled'\n")
    code = marshal.loads(pyc[16:])
    assert code.co_filename == "/" + SITE + "x/mod.py"
    assert str(tmp_path).encode() not in pyc
    assert "compiled" in code.co_consts


def test_python_imports_the_pyc(tmp_path, monkeypatch):
    _, blob = compiled_layer(tmp_path)
    root = tmp_path / "root"
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(blob))) as archive:
        archive.extractall(root, filter="data")
    source = root / SITE / "x/mod.py"
    source.write_bytes(b"VALUE = 'source'\n")  # an unchecked pyc wins over its source
    monkeypatch.setattr(sys, "pycache_prefix", None)
    spec = importlib.util.spec_from_file_location("x_mod_under_test", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE == "compiled"


def test_compiled_layer_is_the_same_in_another_directory(tmp_path):
    digests = []
    for directory in ("one", "two/deeper"):
        (tmp_path / directory).mkdir(parents=True)
        _, blob = compiled_layer(tmp_path / directory)
        digests.append(sha256_file(blob))
    assert digests[0] == digests[1]


def test_no_pyc_without_py_compile(tmp_path):
    _, _, blob = make_layer(
        tmp_path,
        "layer",
        *python_files(tmp_path, PY_FILES),
    )
    assert not any("__pycache__" in name for name in tar_members(blob))


def test_py_compile_for_another_python_is_an_error(tmp_path):
    with pytest.raises(UsageError, match=r"image's Python is 3\.99 but this tool runs"):
        make_layer(
            tmp_path,
            "layer",
            *python_files(tmp_path, PY_FILES),
            "--py-compile", "3.99",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("compression", "level", "message"),
    [("gzip", 10, "gzip must be 0..9"), ("zstd", 0, "zstd must be 1..22")],
)
def test_level_out_of_range_is_a_clear_error(tmp_path, compression, level, message):
    with pytest.raises(SystemExit):
        layer.parse_args(
            ["--output", "o", "--metadata", "m", "--compression", compression]
            + ["--level", str(level)]
        )
    assert compressors.check_level(compression, level) == f"--level for {message}"
