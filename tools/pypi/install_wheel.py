"""Installs one wheel into a directory the way an installer would, for a Bazel repository.

Usage: install_wheel.py WHEEL DEST

Files land in DEST/site-packages; `<dist>.data/purelib` and `platlib` are merged into it and
`<dist>.data/scripts` goes to DEST/bin, as PEP 427 says. Modes are normalized (0644, or
0755 for files the wheel marks executable) so the result does not depend on the host umask.
"""

import os
import stat
import sys
import zipfile


def destination(member: str) -> str | None:
    """Maps a path inside the wheel to a path under DEST, or None to skip it."""
    top, _, rest = member.partition("/")
    if not top.endswith(".data"):
        return os.path.join("site-packages", member)
    scheme, _, path = rest.partition("/")
    if scheme in ("purelib", "platlib"):
        return os.path.join("site-packages", path)
    if scheme == "scripts":
        return os.path.join("bin", path)
    return None  # headers and data are not needed to import or run the package


def install(wheel: str, dest: str) -> None:
    root = os.path.abspath(dest)
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            target = destination(info.filename)
            if target is None:
                continue
            target = os.path.abspath(os.path.join(root, target))
            if not target.startswith(root + os.sep):
                sys.exit(
                    f"install_wheel: {wheel} has a member outside the install tree: {info.filename}"
                )
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            executable = (info.external_attr >> 16) & stat.S_IXUSR or target.startswith(
                os.path.join(root, "bin", "")
            )
            os.chmod(target, 0o755 if executable else 0o644)


if __name__ == "__main__":
    install(sys.argv[1], sys.argv[2])
