"""Builds a normalized root file system tar from Debian .deb files.

Unpacks each package's data.tar (no dpkg, no maintainer scripts), drops
documentation that is not needed at run time (keeping copyright files),
applies the merged-/usr layout, and adds what the maintainer scripts and
the image would otherwise provide: /var/lib/dpkg/status.d entries for
vulnerability scanners, the CA bundle, /etc/passwd and /etc/group with a
nonroot user, /tmp. The output is an uncompressed tar with sorted entries,
a fixed mtime, uid/gid 0, no user names and modes readable by anyone.
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import gzip
import importlib.util
import io
import lzma
import os
import posixpath
import sys
import tarfile
import tempfile
from importlib import _bootstrap_external
from pathlib import Path

# The top-level directories that merged-/usr turns into symlinks into /usr.
USR_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Trees nobody reads at run time (manuals, translations, packaging metadata).
DROPPED_TREES = (
    "usr/share/bug",
    "usr/share/doc-base",
    "usr/share/gtk-doc",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/share/man",
)

PASSWD = """\
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"""

GROUP = """\
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
"""

CA_CERTIFICATES = "usr/share/ca-certificates"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
UTC_ZONE = "usr/share/zoneinfo/Etc/UTC"


class RootfsError(Exception):
    """Bad input; the message names the package and the problem."""


@dataclasses.dataclass
class Entry:
    kind: str  # "dir", "file" or "symlink"
    mode: int
    package: str
    data: bytes = b""
    target: str = ""


@dataclasses.dataclass
class Package:
    name: str
    architecture: str
    control: str
    md5sums: str
    data_tar: bytes


def ar_members(archive: bytes, where: str) -> dict[str, bytes]:
    """Members of a Unix ar archive (the .deb container format)."""
    if not archive.startswith(b"!<arch>\n"):
        raise RootfsError(f"{where} is not a .deb (no ar header)")
    members = {}
    offset = 8
    while offset < len(archive):
        header = archive[offset : offset + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise RootfsError(f"{where} is truncated or corrupt at byte {offset}")
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        start = offset + 60
        members[name] = archive[start : start + size]
        offset = start + size + size % 2
    return members


def decompress(name: str, payload: bytes, where: str) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(payload)
    if name.endswith(".gz"):
        return gzip.decompress(payload)
    if name.endswith(".bz2"):
        return bz2.decompress(payload)
    if name.endswith(".zst"):
        import zstandard  # only some distributions compress packages with zstd

        return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    if name.endswith(".tar"):
        return payload
    raise RootfsError(f"{where}: unsupported member compression {name}")


def member(members: dict[str, bytes], stem: str, where: str) -> bytes:
    for name, payload in members.items():
        if name == stem or name.startswith(stem + "."):
            return decompress(name, payload, where)
    raise RootfsError(f"{where} has no {stem} member")


def control_fields(control: str) -> dict[str, str]:
    fields = {}
    for line in control.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def read_deb(path: Path) -> Package:
    members = ar_members(path.read_bytes(), str(path))
    control_files = {}
    with tarfile.open(
        fileobj=io.BytesIO(member(members, "control.tar", str(path)))
    ) as control_tar:
        for info in control_tar:
            name = info.name.removeprefix("./")
            if name in ("control", "md5sums") and info.isfile():
                control_files[name] = control_tar.extractfile(info).read().decode()
    if "control" not in control_files:
        raise RootfsError(f"{path} has no control file")
    fields = control_fields(control_files["control"])
    return Package(
        name=fields["Package"],
        architecture=fields["Architecture"],
        control=control_files["control"],
        md5sums=control_files.get("md5sums", ""),
        data_tar=member(members, "data.tar", str(path)),
    )


def canonical_path(name: str) -> str:
    """Path relative to /, with merged-/usr applied: lib/x -> usr/lib/x."""
    path = posixpath.normpath("/" + name).lstrip("/")
    first, _, rest = path.partition("/")
    if first in USR_MERGED and rest:
        return f"usr/{first}/{rest}"
    return path


def is_dropped(path: str) -> bool:
    if any(path == tree or path.startswith(tree + "/") for tree in DROPPED_TREES):
        return True
    parts = path.split("/")
    # Keep /usr/share/doc/<package>/copyright: licenses must ship with the binaries.
    if parts[:3] == ["usr", "share", "doc"] and len(parts) > 4:
        return parts[4:] != ["copyright"]
    return False


def normalized_mode(kind: str, mode: int) -> int:
    if kind == "dir":
        return 0o1777 if mode & 0o1002 == 0o1002 else 0o755
    if kind == "symlink":
        return 0o777
    return 0o755 if mode & 0o111 else 0o644


class Tree:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, path: str, entry: Entry) -> None:
        if not path:
            return
        existing = self.entries.get(path)
        if existing is None:
            self.entries[path] = entry
            return
        if existing.kind == entry.kind == "dir":
            existing.mode = max(existing.mode, entry.mode)
            return
        same = (existing.kind, existing.data, existing.target, existing.mode) == (
            entry.kind,
            entry.data,
            entry.target,
            entry.mode,
        )
        if not same:
            raise RootfsError(
                f"/{path} is shipped differently by {existing.package} ({existing.kind}) "
                f"and {entry.package} ({entry.kind}); drop one of them from base/debian_packages.in"
            )

    def add_package(self, package: Package) -> None:
        with tarfile.open(fileobj=io.BytesIO(package.data_tar)) as data_tar:
            for info in data_tar:
                self._add_member(package.name, data_tar, info)

    def _add_member(
        self, package: str, data_tar: tarfile.TarFile, info: tarfile.TarInfo
    ) -> None:
        path = canonical_path(info.name)
        if path in USR_MERGED or is_dropped(path):
            return  # the /bin -> usr/bin style aliases are made once, in finish()
        if info.isdir():
            kind, data, target = "dir", b"", ""
        elif info.issym():
            kind, data, target = "symlink", b"", info.linkname
        elif info.isfile() or info.islnk():
            # Hard links become copies: a sorted tar cannot guarantee the link target comes first.
            kind, data, target = "file", data_tar.extractfile(info).read(), ""
        else:
            raise RootfsError(
                f"{package} ships /{path}, a device or fifo, which an image cannot contain"
            )
        self.add(
            path, Entry(kind, normalized_mode(kind, info.mode), package, data, target)
        )

    def add_generated(
        self, packages: list[Package], symlinks: dict[str, str], directories: list[str]
    ) -> None:
        generated = "(generated)"
        self.add("etc/passwd", Entry("file", 0o644, generated, PASSWD.encode()))
        self.add("etc/group", Entry("file", 0o644, generated, GROUP.encode()))
        self.add("tmp", Entry("dir", 0o1777, generated))
        self.add("home/nonroot", Entry("dir", 0o755, generated))
        for directory in directories:
            self.add(canonical_path(directory), Entry("dir", 0o755, generated))
        for link, target in sorted(symlinks.items()):
            self.add(
                canonical_path(link), Entry("symlink", 0o777, generated, target=target)
            )
        certificates = sorted(
            path
            for path, entry in self.entries.items()
            if path.startswith(CA_CERTIFICATES + "/")
            and path.endswith(".crt")
            and entry.kind == "file"
        )
        if certificates:
            # What update-ca-certificates writes from ca-certificates' postinst.
            bundle = b"".join(
                self.entries[path].data.rstrip(b"\n") + b"\n" for path in certificates
            )
            self.add(CA_BUNDLE, Entry("file", 0o644, generated, bundle))
        if UTC_ZONE in self.entries:
            self.add(
                "etc/localtime",
                Entry("symlink", 0o777, generated, target="/" + UTC_ZONE),
            )
        for package in packages:
            self.add(
                f"var/lib/dpkg/status.d/{package.name}",
                Entry(
                    "file", 0o644, generated, status_paragraph(package.control).encode()
                ),
            )
            md5sums = self.kept_md5sums(package.md5sums)
            if md5sums:
                self.add(
                    f"var/lib/dpkg/status.d/{package.name}.md5sums",
                    Entry("file", 0o644, generated, md5sums.encode()),
                )

    def kept_md5sums(self, md5sums: str) -> str:
        lines = []
        for line in md5sums.splitlines():
            digest, _, name = line.partition(" ")
            path = canonical_path(name.strip())
            if path in self.entries:
                lines.append(f"{digest}  {path}\n")
        return "".join(sorted(lines, key=lambda line: line.split("  ", 1)[1]))

    def finish(self) -> None:
        for path in list(self.entries):
            parent = posixpath.dirname(path)
            while parent:
                existing = self.entries.get(parent)
                if existing is not None and existing.kind != "dir":
                    raise RootfsError(
                        f"/{path} ({self.entries[path].package}) lies under /{parent}, "
                        f"which {existing.package} ships as a {existing.kind}"
                    )
                if existing is None:
                    self.entries[parent] = Entry("dir", 0o755, "(parent)")
                parent = posixpath.dirname(parent)
        for alias in USR_MERGED:
            real = self.entries.get(f"usr/{alias}")
            if real is not None and real.kind == "dir":
                self.add(
                    alias,
                    Entry("symlink", 0o777, "(merged /usr)", target=f"usr/{alias}"),
                )

    def compile_python(self, library: str) -> int:
        """Adds unchecked-hash .pyc files for the .py files under `library`.

        Without them a read-only image recompiles every imported stdlib module
        at each cold start. Hash-based pycs embed no mtime, so they stay
        valid whatever mtime the layer gets.
        """
        version = posixpath.basename(library).removeprefix("python")
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        if version != running:
            raise RootfsError(
                f"compiling /{library} needs Python {version} to run this tool (running {running})"
            )
        sources = sorted(
            path
            for path, entry in self.entries.items()
            if path.startswith(library + "/")
            and path.endswith(".py")
            and entry.kind == "file"
        )
        compiled = 0
        for path in sources:
            source = self.entries[path].data
            try:
                code = compile(
                    source, "/" + path, "exec", dont_inherit=True, optimize=0
                )
            except (SyntaxError, ValueError):
                continue  # test data with invalid syntax; Debian's py3compile skips these too
            pyc = _bootstrap_external._code_to_hash_pyc(  # no public API for hash-based pycs in memory
                code, importlib.util.source_hash(source), checked=False
            )
            self.add(
                importlib.util.cache_from_source(path),
                Entry("file", 0o644, "(compiled)", pyc),
            )
            compiled += 1
        return compiled

    def write(self, output: Path, mtime: int) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=output.parent, prefix=f".{output.name}."
        )
        try:
            with (
                os.fdopen(handle, "wb") as stream,
                tarfile.open(
                    fileobj=stream, mode="w", format=tarfile.PAX_FORMAT
                ) as out,
            ):
                for path in sorted(self.entries):
                    entry = self.entries[path]
                    info = tarfile.TarInfo(path)
                    info.mtime = mtime
                    info.mode = entry.mode
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if entry.kind == "dir":
                        info.type = tarfile.DIRTYPE
                        out.addfile(info)
                    elif entry.kind == "symlink":
                        info.type = tarfile.SYMTYPE
                        info.linkname = entry.target
                        out.addfile(info)
                    else:
                        info.size = len(entry.data)
                        out.addfile(info, io.BytesIO(entry.data))
            os.chmod(temporary, 0o644)
            os.replace(temporary, output)
        except BaseException:
            os.unlink(temporary)
            raise


def status_paragraph(control: str) -> str:
    """The control paragraph as dpkg's status database would record it."""
    lines = control.strip("\n").splitlines()
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("Package:"):
            out.append("Status: install ok installed")
    return "\n".join(out) + "\n"


def build(
    debs: list[Path],
    architecture: str,
    output: Path,
    symlinks: dict[str, str] | None = None,
    directories: list[str] | None = None,
    compile_python: list[str] | None = None,
    mtime: int = 0,
) -> Tree:
    packages = sorted((read_deb(deb) for deb in debs), key=lambda package: package.name)
    seen: dict[str, Package] = {}
    for package in packages:
        if package.architecture not in (architecture, "all"):
            raise RootfsError(
                f"{package.name} is built for {package.architecture}, not {architecture}: "
                "take the .deb files of the matching architecture from the lock"
            )
        if package.name in seen:
            raise RootfsError(f"{package.name} is given twice; pass each package once")
        seen[package.name] = package
    tree = Tree()
    for package in packages:
        tree.add_package(package)
    tree.add_generated(packages, symlinks or {}, directories or [])
    for library in compile_python or []:
        tree.compile_python(canonical_path(library))
    tree.finish()
    tree.write(output, mtime)
    return tree


def parse_symlink(text: str) -> tuple[str, str]:
    link, separator, target = text.partition("=")
    if not separator or not link or not target:
        raise argparse.ArgumentTypeError(f"expected LINK=TARGET, got {text!r}")
    return link, target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, fromfile_prefix_chars="@")
    parser.add_argument(
        "--arch", required=True, help="Debian architecture: amd64, arm64, ..."
    )
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument(
        "--symlink", action="append", type=parse_symlink, default=[], help="LINK=TARGET"
    )
    parser.add_argument(
        "--directory", action="append", default=[], help="an extra empty directory"
    )
    parser.add_argument(
        "--compile-python",
        action="append",
        default=[],
        metavar="LIBDIR",
        help="add .pyc files for the .py files under LIBDIR (e.g. /usr/lib/python3.13)",
    )
    parser.add_argument(
        "--mtime", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    )
    parser.add_argument("debs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        build(
            args.debs,
            args.arch,
            args.output,
            dict(args.symlink),
            args.directory,
            args.compile_python,
            args.mtime,
        )
    except RootfsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
