import hashlib
import io
import marshal
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tools.debian import rootfs

PYTHON_LIB = f"usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"


def make_deb(
    directory: Path,
    name: str,
    files: dict[str, bytes | tuple[bytes, int]] | None = None,
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
    arch: str = "amd64",
    compression: str = "xz",
) -> Path:
    """A real .deb built by dpkg-deb from the given files (path -> data or (data, mode))."""
    tree = directory / f"{name}-{arch}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    md5sums = []
    for path, content in (files or {}).items():
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
        md5sums.append(f"{hashlib.md5(data).hexdigest()}  {path}\n")
    for link, target in (symlinks or {}).items():
        (tree / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tree / link)
    for link, target in (hardlinks or {}).items():
        os.link(tree / target, tree / link)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: {arch}\n"
        "Maintainer: Test <test@example.invalid>\nDescription: test package\n two lines\n"
    )
    (tree / "DEBIAN" / "md5sums").write_text("".join(md5sums))
    output = directory / f"{name}_{arch}.deb"
    subprocess.run(
        [
            "dpkg-deb",
            "--root-owner-group",
            f"-Z{compression}",
            "--build",
            str(tree),
            str(output),
        ],
        check=True,
        capture_output=True,
    )
    return output


def entries(tar_path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return {info.name: info for info in tar.getmembers()}


def content(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        return tar.extractfile(name).read()


def test_entries_are_normalized_and_sorted(tmp_path):
    deb = make_deb(
        tmp_path,
        "tool",
        files={
            "usr/bin/tool": (b"#!/bin/sh\n", 0o700),
            "etc/tool/secret.conf": (b"x=1\n", 0o600),
            "usr/lib/tool/data": (b"data", 0o664),
        },
    )
    output = tmp_path / "rootfs.tar"
    rootfs.build([deb], "amd64", output)
    infos = entries(output)
    names = list(infos)
    assert names == sorted(names)
    assert not any(name.startswith(("/", "./")) for name in names)
    for info in infos.values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
        assert info.mode & 0o444 == 0o444 or info.issym(), info.name
    assert infos["usr/bin/tool"].mode == 0o755
    assert infos["etc/tool/secret.conf"].mode == 0o644
    assert infos["usr/lib/tool/data"].mode == 0o644
    assert infos["usr/lib/tool"].isdir() and infos["usr/lib/tool"].mode == 0o755
    assert infos["tmp"].mode == 0o1777
    assert stat.S_IMODE(output.stat().st_mode) == 0o644


def test_documentation_is_dropped_but_copyright_kept(tmp_path):
    deb = make_deb(
        tmp_path,
        "libfoo1",
        files={
            "usr/lib/x86_64-linux-gnu/libfoo.so.1": b"\x7fELF",
            "usr/share/doc/libfoo1/copyright": b"MIT\n",
            "usr/share/doc/libfoo1/changelog.Debian.gz": b"log",
            "usr/share/man/man3/foo.3.gz": b"man",
            "usr/share/locale/de/LC_MESSAGES/foo.mo": b"mo",
            "usr/share/lintian/overrides/libfoo1": b"lintian",
            "usr/share/info/foo.info.gz": b"info",
        },
    )
    output = tmp_path / "rootfs.tar"
    rootfs.build([deb], "amd64", output)
    names = set(entries(output))
    assert "usr/share/doc/libfoo1/copyright" in names
    assert "usr/lib/x86_64-linux-gnu/libfoo.so.1" in names
    for dropped in (
        "changelog.Debian.gz",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/lintian",
        "usr/share/info",
    ):
        assert not any(dropped in name for name in names), dropped


def test_merged_usr_moves_files_and_adds_aliases(tmp_path):
    deb = make_deb(
        tmp_path,
        "libc",
        files={
            "lib/x86_64-linux-gnu/libc.so.6": b"libc",
            "bin/sh": (b"sh", 0o755),
            "usr/lib64/.keep": b"",
        },
        symlinks={"lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld.so"},
    )
    output = tmp_path / "rootfs.tar"
    rootfs.build([deb], "amd64", output)
    infos = entries(output)
    assert infos["usr/lib/x86_64-linux-gnu/libc.so.6"].isfile()
    assert infos["usr/bin/sh"].isfile()
    assert (
        infos["usr/lib64/ld-linux-x86-64.so.2"].linkname
        == "/lib/x86_64-linux-gnu/ld.so"
    )
    assert {name: infos[name].linkname for name in ("bin", "lib", "lib64")} == {
        "bin": "usr/bin",
        "lib": "usr/lib",
        "lib64": "usr/lib64",
    }
    assert "sbin" not in infos  # no usr/sbin, so no dangling alias


def test_status_d_records_packages_for_scanners(tmp_path):
    deb = make_deb(
        tmp_path,
        "libbar2",
        files={
            "usr/lib/libbar.so.2": b"bar",
            "usr/share/doc/libbar2/changelog.gz": b"dropped",
        },
    )
    output = tmp_path / "rootfs.tar"
    rootfs.build([deb], "amd64", output)
    status = content(output, "var/lib/dpkg/status.d/libbar2").decode()
    assert status.startswith("Package: libbar2\nStatus: install ok installed\n")
    assert "Version: 1.0-1\n" in status
    assert "Architecture: amd64\n" in status
    assert status.endswith(" two lines\n")
    md5sums = content(output, "var/lib/dpkg/status.d/libbar2.md5sums").decode()
    assert md5sums == f"{hashlib.md5(b'bar').hexdigest()}  usr/lib/libbar.so.2\n"


def test_hard_links_become_regular_files(tmp_path):
    deb = make_deb(
        tmp_path,
        "python",
        files={"usr/bin/python3.99": (b"interpreter", 0o755)},
        hardlinks={"usr/bin/python3.99m": "usr/bin/python3.99"},
    )
    with tarfile.open(fileobj=io.BytesIO(rootfs.read_deb(deb).data_tar)) as data_tar:
        assert any(info.islnk() for info in data_tar.getmembers()), (
            "the fixture must contain a hard link"
        )
    output = tmp_path / "rootfs.tar"
    rootfs.build([deb], "amd64", output)
    infos = entries(output)
    assert infos["usr/bin/python3.99m"].isfile()
    assert content(output, "usr/bin/python3.99m") == b"interpreter"
    assert infos["usr/bin/python3.99m"].mode == 0o755


def test_generated_system_files(tmp_path):
    certificates = make_deb(
        tmp_path,
        "ca-certificates",
        arch="all",
        files={
            "usr/share/ca-certificates/mozilla/B_Root.crt": b"-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----",
            "usr/share/ca-certificates/mozilla/A_Root.crt": b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
        },
    )
    zones = make_deb(
        tmp_path, "tzdata", arch="all", files={"usr/share/zoneinfo/Etc/UTC": b"TZif"}
    )
    output = tmp_path / "rootfs.tar"
    rootfs.build(
        [certificates, zones],
        "arm64",
        output,
        symlinks={"/usr/bin/python3": "python3.13"},
        directories=["/var/task"],
    )
    infos = entries(output)
    assert content(output, "etc/ssl/certs/ca-certificates.crt") == (
        b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"
        b"-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
    )
    assert infos["etc/localtime"].linkname == "/usr/share/zoneinfo/Etc/UTC"
    passwd = content(output, "etc/passwd").decode()
    assert passwd.startswith("root:x:0:0:")
    assert "nonroot:x:65532:65532:" in passwd
    assert "nonroot:x:65532:" in content(output, "etc/group").decode()
    assert (
        infos["usr/bin/python3"].issym()
        and infos["usr/bin/python3"].linkname == "python3.13"
    )
    assert infos["var/task"].isdir() and infos["var/task"].mode == 0o755
    assert infos["home/nonroot"].isdir()


def test_conflicting_files_name_both_packages(tmp_path):
    first = make_deb(tmp_path, "first", files={"etc/shared.conf": b"one"})
    second = make_deb(tmp_path, "second", files={"etc/shared.conf": b"two"})
    with pytest.raises(
        rootfs.RootfsError,
        match="/etc/shared.conf is shipped differently by first .* and second",
    ):
        rootfs.build([first, second], "amd64", tmp_path / "rootfs.tar")
    assert not (tmp_path / "rootfs.tar").exists()


def test_identical_files_from_two_packages_are_merged(tmp_path):
    first = make_deb(tmp_path, "first", files={"usr/share/common/same.txt": b"same"})
    second = make_deb(tmp_path, "second", files={"usr/share/common/same.txt": b"same"})
    rootfs.build([first, second], "amd64", tmp_path / "rootfs.tar")
    assert content(tmp_path / "rootfs.tar", "usr/share/common/same.txt") == b"same"


def test_wrong_architecture_and_duplicates_are_rejected(tmp_path):
    arm = make_deb(
        tmp_path, "libarm", arch="arm64", files={"usr/lib/libarm.so": b"arm"}
    )
    with pytest.raises(
        rootfs.RootfsError, match="libarm is built for arm64, not amd64"
    ):
        rootfs.build([arm], "amd64", tmp_path / "rootfs.tar")
    with pytest.raises(rootfs.RootfsError, match="libarm is given twice"):
        rootfs.build([arm, arm], "arm64", tmp_path / "rootfs.tar")


def test_not_a_deb_is_rejected(tmp_path):
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(rootfs.RootfsError, match="bogus.deb is not a .deb"):
        rootfs.build([bogus], "amd64", tmp_path / "rootfs.tar")


def test_output_is_reproducible_whatever_the_input_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    debs_a = [
        make_deb(tmp_path / "a", "one", files={"usr/share/one/data": b"1"}),
        make_deb(tmp_path / "a", "two", files={"usr/share/two/data": (b"2", 0o755)}),
    ]
    debs_b = [
        make_deb(tmp_path / "b", "two", files={"usr/share/two/data": (b"2", 0o755)}),
        make_deb(tmp_path / "b", "one", files={"usr/share/one/data": b"1"}),
    ]
    rootfs.build(debs_a, "amd64", tmp_path / "a.tar")
    rootfs.build(debs_b, "amd64", tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_zstd_and_gzip_compressed_packages(tmp_path):
    zstd = make_deb(
        tmp_path, "zstdpkg", files={"usr/share/z/data": b"zstd"}, compression="zstd"
    )
    gzip = make_deb(
        tmp_path, "gzippkg", files={"usr/share/g/data": b"gzip"}, compression="gzip"
    )
    rootfs.build([zstd, gzip], "amd64", tmp_path / "rootfs.tar")
    assert content(tmp_path / "rootfs.tar", "usr/share/z/data") == b"zstd"
    assert content(tmp_path / "rootfs.tar", "usr/share/g/data") == b"gzip"


def test_compile_python_adds_unchecked_hash_pycs(tmp_path):
    deb = make_deb(
        tmp_path,
        "stdlib",
        files={
            f"{PYTHON_LIB}/json/__init__.py": b"VALUE = {'a', 'b', 'c'}\n",
            f"{PYTHON_LIB}/test/badsyntax.py": b"def (:\n",
        },
    )
    output = tmp_path / "rootfs.tar"
    rootfs.build([deb], "amd64", output, compile_python=["/" + PYTHON_LIB])
    tag = sys.implementation.cache_tag
    pyc = content(output, f"{PYTHON_LIB}/json/__pycache__/__init__.{tag}.pyc")
    assert (
        int.from_bytes(pyc[4:8], "little") == 0b01
    )  # hash-based, not checked against the source
    code = marshal.loads(pyc[16:])
    assert (
        code.co_filename == f"/{PYTHON_LIB}/json/__init__.py"
    )  # the image path, not a build path
    assert frozenset({"a", "b", "c"}) in code.co_consts
    assert not any(
        "badsyntax" in name and name.endswith(".pyc") for name in entries(output)
    )


def test_compile_python_refuses_another_python_version(tmp_path):
    deb = make_deb(tmp_path, "stdlib", files={"usr/lib/python2.7/os.py": b"x = 1\n"})
    with pytest.raises(rootfs.RootfsError, match="needs Python 2.7 to run this tool"):
        rootfs.build(
            [deb],
            "amd64",
            tmp_path / "rootfs.tar",
            compile_python=["/usr/lib/python2.7"],
        )


def test_command_line(tmp_path, capsys):
    deb = make_deb(tmp_path, "cli", files={"usr/share/cli/data": b"cli"})
    output = tmp_path / "out" / "rootfs.tar"
    assert (
        rootfs.main(
            ["--arch", "amd64", "--output", str(output), "--symlink", "/a=b", str(deb)]
        )
        == 0
    )
    assert entries(output)["a"].linkname == "b"
    assert rootfs.main(["--arch", "arm64", "--output", str(output), str(deb)]) == 1
    assert "cli is built for amd64, not arm64" in capsys.readouterr().err
