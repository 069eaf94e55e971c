"""The entries of one layer: files, directories, symlinks and hard links from tars, the file
system and Python runfiles, normalized so the layer depends only on contents and paths (see
tools/oci/layer.py for the rules)."""

import collections
import dataclasses
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable

from tools.oci import common
from tools.oci.layers import bytecode, wheels


@dataclasses.dataclass
class Entry:
    path: str
    kind: str  # "file", "dir", "symlink" or "hardlink"
    mode: int
    origin: str
    size: int = 0
    linkname: str = ""
    open_data: Callable | None = None


def normalize_path(path, origin):
    """'./usr//bin/' -> 'usr/bin'; the layer root is ''."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise common.UsageError(
            f"path {path!r} from {origin} contains '..'; use a path inside the image"
        )
    return "/".join(parts)


def normalized_file_mode(mode):
    return 0o755 if mode & 0o111 else 0o644


def normalized_dir_mode(mode):
    if mode & 0o1002 == 0o1002:  # world-writable and sticky, like /tmp: keep it usable
        return 0o1777
    return 0o755


class Layer:
    """Entries of one layer, keyed by normalized path."""

    def __init__(self, allow_overwrite=False):
        self.entries = {}
        self.allow_overwrite = allow_overwrite
        self._temp_files = []
        self._temp_dir = None

    def add(self, entry):
        if not entry.path:
            return  # the root directory is implied by every layer
        existing = self.entries.get(entry.path)
        if existing is not None and not self.allow_overwrite:
            if existing.kind == "dir" and entry.kind == "dir":
                return
            if not _same_content(existing, entry):
                raise common.UsageError(
                    f"/{entry.path} comes from both {existing.origin} and {entry.origin} with different "
                    "contents; remove one of them, or allow overwrites (the later input wins)"
                )
            return
        if existing is not None and existing.kind == "dir" and entry.kind == "dir":
            return
        self.entries[entry.path] = entry

    def add_file(self, dest, source, mode=0o644, origin=None):
        """A file or, when source is a directory, its whole tree (symlinks followed, as Bazel inputs are symlinks)."""
        origin = origin or source
        dest = normalize_path(dest, origin)
        if os.path.isdir(source):
            self.add(Entry(dest, "dir", 0o755, origin))
            for root, dirs, files in os.walk(source, followlinks=True):
                dirs.sort()
                relative_root = os.path.relpath(root, source)
                for name in dirs:
                    self.add(
                        Entry(
                            normalize_path(f"{dest}/{relative_root}/{name}", origin),
                            "dir",
                            0o755,
                            origin,
                        )
                    )
                for name in sorted(files):
                    path = os.path.join(root, name)
                    self._add_regular_file(
                        f"{dest}/{relative_root}/{name}", path, mode, path
                    )
            return
        self._add_regular_file(dest, source, mode, origin)

    def _add_regular_file(self, dest, source, mode, origin):
        try:
            size = os.stat(source).st_size
        except FileNotFoundError:
            raise common.UsageError(f"input file {source} does not exist") from None
        self.add(
            Entry(
                normalize_path(dest, origin),
                "file",
                mode,
                origin,
                size=size,
                open_data=lambda: open(source, "rb"),  # noqa: SIM115 (opened when written)
            )
        )

    def add_dir(self, dest, mode=0o755):
        self.add(Entry(normalize_path(dest, "--dir"), "dir", mode, f"directory {dest}"))

    def add_symlink(self, dest, target):
        if not target:
            raise common.UsageError(f"symlink {dest} has an empty target")
        self.add(
            Entry(
                normalize_path(dest, "--symlink"),
                "symlink",
                0o777,
                f"symlink {dest}",
                linkname=target,
            )
        )

    def add_tar(self, path):
        """Every member of an existing tar (uncompressed, gzip, zstd, xz or bzip2), re-normalized."""
        source = self._seekable_tar(path)
        if isinstance(source, str):
            archive = tarfile.open(source, "r:")  # noqa: SIM115 (closed by close())
        else:
            archive = tarfile.open(fileobj=source, mode="r:")  # noqa: SIM115
        self._temp_files.append(archive)
        origin = os.path.basename(path)
        for member in archive.getmembers():
            name = normalize_path(member.name, origin)
            where = f"{origin}:{member.name}"
            if member.isdir():
                self.add(Entry(name, "dir", normalized_dir_mode(member.mode), where))
            elif member.isreg():
                self.add(
                    Entry(
                        name,
                        "file",
                        normalized_file_mode(member.mode),
                        where,
                        size=member.size,
                        open_data=lambda member=member: archive.extractfile(member),
                    )
                )
            elif member.issym():
                self.add(Entry(name, "symlink", 0o777, where, linkname=member.linkname))
            elif member.islnk():
                target = normalize_path(member.linkname, where)
                self.add(Entry(name, "hardlink", 0, where, linkname=target))
            else:
                raise common.UsageError(
                    f"{where} is a device, FIFO or other special file, which layers do not carry; "
                    "leave it out of the tar (the container runtime provides /dev)"
                )

    def _seekable_tar(self, path):
        """Sorting reads members out of order, so compressed tars are first expanded to a temp file."""
        try:
            with open(path, "rb") as handle:
                magic = handle.read(6)
        except FileNotFoundError:
            raise common.UsageError(f"input tar {path} does not exist") from None
        if magic[:2] == b"\x1f\x8b":
            import gzip as opener_module

            opener = opener_module.open
        elif magic[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            def opener(source, mode):
                return zstandard.ZstdDecompressor().stream_reader(
                    open(source, "rb"), closefd=True
                )
        elif magic == b"\xfd7zXZ\x00":
            import lzma

            opener = lzma.open
        elif magic[:3] == b"BZh":
            import bz2

            opener = bz2.open
        else:
            return path
        handle = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._temp_files.append(handle)
        with opener(path, "rb") as source:
            shutil.copyfileobj(source, handle, 1 << 20)
        handle.seek(0)
        return _NamedHandle(handle, path)

    def add_python_files(
        self,
        files,
        site_packages,
        import_roots,
        main_repo,
        include="all",
        exclude=(),
        compile_version=None,
        wheel_files=(),
    ):
        """Places py_library runfiles where `import` finds them: under site_packages, relative to their import root.

        files: (short_path, path) pairs as Bazel's File gives them. Files of external repositories
        (short_path '../<repo>/...') are third-party; the rest is first-party code.
        wheel_files: .whl files whose members go under site_packages (see wheels.py).
        compile_version: the image's Python ("3.13"): also add a .pyc for each .py placed.
        """
        excluded = set(exclude)
        sources = {}  # layer path -> source; the last one wins, as with allow_overwrite
        for wheel in wheel_files:
            sources.update(self._add_wheel(wheel, site_packages))
        roots = sorted(
            {normalize_path(root, "import roots") for root in import_roots},
            key=len,
            reverse=True,
        )
        for short_path, path in files:
            if short_path in excluded:
                continue
            third_party = short_path.startswith("../")
            if (
                include == "third_party"
                and not third_party
                or include == "first_party"
                and third_party
            ):
                continue
            runfiles_path = (
                short_path[3:] if third_party else f"{main_repo}/{short_path}"
            )
            relative = _import_relative_path(runfiles_path, roots)
            dest = f"{site_packages}/{relative}"
            self._add_regular_file(dest, path, 0o644, short_path)
            if dest.endswith(".py"):
                sources[normalize_path(dest, short_path)] = path
        if compile_version:
            self.compile_python(sources, compile_version)

    def _add_wheel(self, wheel, site_packages):
        """Adds the wheel's site-packages files; returns {layer path: WheelMember} of its .py files."""
        try:
            archive = zipfile.ZipFile(wheel)  # closed by close()
        except (FileNotFoundError, zipfile.BadZipFile) as error:
            raise common.UsageError(f"wheel {wheel} can not be read: {error}") from None
        self._temp_files.append(archive)
        sources = {}
        origin = os.path.basename(wheel)
        for info, path in wheels.site_packages_members(archive):
            where = f"{origin}:{info.filename}"
            dest = normalize_path(f"{site_packages}/{path}", where)
            self.add(
                Entry(
                    dest,
                    "file",
                    0o644,
                    where,
                    size=info.file_size,
                    open_data=lambda info=info: archive.open(info),
                )
            )
            if dest.endswith(".py"):
                sources[dest] = bytecode.WheelMember(wheel, info.filename)
        return sources

    def compile_python(self, sources, version):
        """Adds the bytecode of {layer path: source} (see bytecode.py); a pyc shipped in a
        wheel (timestamp-based, stale in the layer) is replaced."""
        if self._temp_dir is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="pyc-")
        for pyc_path, compiled, source in bytecode.compile_sources(
            sources, version, self._temp_dir.name
        ):
            self.entries.pop(pyc_path, None)
            self._add_regular_file(pyc_path, compiled, 0o644, f"{source} (compiled)")

    def set_mode(self, path, mode):
        key = normalize_path(path, "--mode")
        if key not in self.entries:
            raise common.UsageError(
                f"--mode names /{key}, which is not in the layer; check the path"
            )
        self.entries[key].mode = mode

    def finalized_entries(self):
        """Sorted entries with missing parent directories added and hard links resolved."""
        entries = dict(self.entries)
        for path in list(entries):
            parent = os.path.dirname(path)
            while parent and parent not in entries:
                entries[parent] = Entry(parent, "dir", 0o755, f"parent of /{path}")
                parent = os.path.dirname(parent)
            if parent and entries[parent].kind != "dir":
                raise common.UsageError(
                    f"/{path} ({entries[path].origin}) lies under /{parent}, which is a {entries[parent].kind} "
                    f"from {entries[parent].origin}; a layer path cannot be both"
                )
        _resolve_hard_links(entries)
        return [entries[path] for path in sorted(entries)]

    def close(self):
        for handle in self._temp_files:
            handle.close()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()


class _NamedHandle:
    """A temp file that tarfile reads, named after the original tar in its error messages."""

    def __init__(self, handle, name):
        self._handle = handle
        self.name = name

    def __getattr__(self, attribute):
        return getattr(self._handle, attribute)


def _import_relative_path(runfiles_path, roots):
    for root in roots:
        if runfiles_path.startswith(root + "/"):
            return runfiles_path[len(root) + 1 :]
    inside_repo = runfiles_path.partition("/")[2]
    marker = "site-packages/"
    if marker in inside_repo:
        return inside_repo.split(marker, 1)[1]
    return inside_repo


def _same_content(first, second):
    if first.kind != second.kind or first.mode != second.mode:
        return False
    if first.kind in ("symlink", "hardlink"):
        return first.linkname == second.linkname
    if first.kind == "file":
        return first.size == second.size and _content_digest(first) == _content_digest(
            second
        )
    return True


def _content_digest(entry):
    digest = hashlib.sha256()
    with entry.open_data() as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _resolve_hard_links(entries):
    """Each group of hard-linked paths keeps its data in its first path in sorted order, as tar readers require."""
    groups = collections.defaultdict(list)
    for path, entry in entries.items():
        if entry.kind != "hardlink":
            continue
        target, seen = entry.linkname, {path}
        while (
            target in entries
            and entries[target].kind == "hardlink"
            and target not in seen
        ):
            seen.add(target)
            target = entries[target].linkname
        if target not in entries or entries[target].kind != "file":
            raise common.UsageError(
                f"hard link /{path} ({entry.origin}) points to /{entry.linkname}, which is not a regular file "
                "in the same layer; put the link and its target in one tar"
            )
        groups[target].append(path)
    for target, links in groups.items():
        data = entries[target]
        first, *others = sorted([target, *links])
        entries[first] = dataclasses.replace(data, path=first)
        for path in others:
            entries[path] = Entry(
                path, "hardlink", data.mode, data.origin, linkname=first
            )
