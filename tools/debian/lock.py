"""Regenerates the Debian locks: base/debian.lock (the Lambda runtime) and
tools/buildenv/worker/debian.lock (the remote-execution worker image).

For each lock: downloads the signed Release files and Packages.xz indexes of its suites, picks
per package the version apt would (pin priorities from the lock's apt preferences files), resolves
the Depends/Pre-Depends closure of the listed packages for each architecture and pins every .deb
by URL, sha256 and size. Run it with:

    tools/bazel run //tools/debian:lock            # every lock
    tools/bazel run //tools/debian:lock -- worker  # one of them
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from tools.debian.lockfile import archive, pins, resolve, write
from tools.debian.lockfile.errors import LockError

FORKY = archive.Source("http://deb.debian.org/debian", "forky")


@dataclasses.dataclass(frozen=True)
class LockSpec:
    packages: str  # the package list, relative to the workspace
    output: str
    sources: tuple[archive.Source, ...]
    # apt preferences files deciding which suite each package comes from (none: highest version)
    preferences: tuple[str, ...] = ()


LOCKS = {
    "base": LockSpec("base/debian_packages.in", "base/debian.lock", archive.TRIXIE),
    # The worker takes forky's packages exactly where the worker environment (worker_env.py)
    # does: the same preferences files, read here.
    "worker": LockSpec(
        "tools/buildenv/worker/debian_packages.in",
        "tools/buildenv/worker/debian.lock",
        (*archive.TRIXIE, FORKY),
        ("tools/buildenv/apt-preferences", "tools/buildenv/worker-apt-preferences"),
    ),
}


def lock_one(
    spec: LockSpec, workspace: Path, mirror: archive.Mirror
) -> dict[str, resolve.Resolution]:
    """Resolves `spec` and writes its lock; nothing is written if anything fails."""
    inputs = resolve.parse_package_list(
        (workspace / spec.packages).read_text(), spec.packages
    )
    preferences = pins.read_preferences([workspace / p for p in spec.preferences])
    missing = set(preferences.suites) - {source.suite for source in spec.sources}
    if missing:
        raise LockError(
            f"{', '.join(spec.preferences)} pin suites the lock does not read: "
            f"{', '.join(sorted(missing))}; add them to LOCKS in tools/debian/lock.py"
        )
    indexes, releases = mirror.load(spec.sources, preferences)
    resolutions = {
        architecture: resolve.resolve(
            indexes[architecture], inputs, architecture, where=spec.packages
        )
        for architecture in archive.ARCHITECTURES
    }
    made_from = " + ".join((spec.packages, *spec.preferences))
    text = write.render_lock(inputs, releases, resolutions, made_from)
    write.write_atomically(workspace / spec.output, text)
    return resolutions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "locks",
        nargs="*",
        metavar="LOCK",
        help=f"which locks to regenerate ({', '.join(LOCKS)}; default: all)",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")),
    )
    parser.add_argument(
        "--keyring", help="Debian archive keyring (default: the system's)"
    )
    parser.add_argument(
        "--no-verify-signature",
        action="store_true",
        help="trust Release files without checking signatures",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.locks) - set(LOCKS))
    if unknown:
        parser.error(
            f"no lock named {', '.join(unknown)}; choose from {', '.join(LOCKS)}"
        )

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        keyring = None
        if not args.no_verify_signature:
            keyring = args.keyring or next(
                (path for path in archive.KEYRINGS if os.path.exists(path)), None
            )
            if keyring is None:
                raise LockError(
                    "no Debian archive keyring found (apt-get install debian-archive-keyring, "
                    "or pass --keyring PATH or --no-verify-signature)"
                )
        mirror = archive.Mirror(keyring, log)
        for name in args.locks or LOCKS:
            spec = LOCKS[name]
            resolutions = lock_one(spec, args.workspace, mirror)
            for architecture, resolution in resolutions.items():
                total = sum(c.size for c in resolution.packages.values())
                log(
                    f"{name} {architecture}: {len(resolution.packages)} packages, "
                    f"{total / 1e6:.1f} MB of .deb files"
                )
            log(f"wrote {spec.output}")
    except LockError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
