"""Installs one wheel the way an installer would, for wheel_library (tools/pypi/wheel.bzl).

Usage: install_wheel.py WHEEL SITE_PACKAGES [--script NAME BIN_DIR]...

The wheel's files land in SITE_PACKAGES, with `<dist>.data/purelib` and `platlib` merged into
it, as PEP 427 says; each script named with --script (from `<dist>.data/scripts`) is written to
BIN_DIR/NAME. Modes are normalized (0644, or 0755 for files the wheel marks executable and for
scripts) so the result does not depend on the host umask. The layer tool places wheels in image
layers with the same `destination` mapping, without unpacking them.
"""

import argparse
import os
import stat
import sys
import zipfile


def destination(member: str) -> tuple[str, str] | None:
    """Where a wheel member goes: ("site-packages", path) or ("scripts", name); None to skip it."""
    top, _, rest = member.partition("/")
    if not top.endswith(".data"):
        return "site-packages", member
    scheme, _, path = rest.partition("/")
    if scheme in ("purelib", "platlib"):
        return "site-packages", path
    if scheme == "scripts":
        return "scripts", path
    return None  # headers and data are not needed to import or run the package


def install(wheel: str, site_packages: str, scripts: dict[str, str]) -> None:
    """Writes the wheel's site-packages files under `site_packages` and each script named in
    {name: directory} into its directory; fails when a named script is missing."""
    root = os.path.abspath(site_packages)
    os.makedirs(root, exist_ok=True)
    written = set()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            place = destination(info.filename)
            if place is None:
                continue
            kind, path = place
            if kind == "scripts":
                if path not in scripts:
                    continue
                target = os.path.join(os.path.abspath(scripts[path]), path)
                written.add(path)
            else:
                target = os.path.abspath(os.path.join(root, path))
                if not target.startswith(root + os.sep):
                    sys.exit(
                        f"install_wheel: {wheel} has a member outside the install tree: "
                        f"{info.filename}"
                    )
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            executable = kind == "scripts" or (info.external_attr >> 16) & stat.S_IXUSR
            os.chmod(target, 0o755 if executable else 0o644)
    missing = sorted(set(scripts) - written)
    if missing:
        sys.exit(f"install_wheel: {wheel} has no script {', '.join(missing)}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("site_packages")
    parser.add_argument(
        "--script", nargs=2, action="append", default=[], metavar=("NAME", "BIN_DIR")
    )
    args = parser.parse_args(argv)
    install(args.wheel, args.site_packages, dict(args.script))


if __name__ == "__main__":
    main(sys.argv[1:])
