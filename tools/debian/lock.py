"""Regenerates base/debian.lock from base/debian_packages.in.

Downloads the signed Release files and Packages.xz indexes of Debian trixie
(plus trixie-updates and trixie-security), resolves the Depends/Pre-Depends
closure of the listed packages for each architecture and pins every .deb by
URL, sha256 and size. Run it with:

    tools/bazel run //tools/debian:lock
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

REGENERATE_COMMAND = "tools/bazel run //tools/debian:lock"
ARCHITECTURES = ("amd64", "arm64")
COMPONENT = "main"


@dataclasses.dataclass(frozen=True)
class Source:
    url: str
    suite: str


# Later sources do not override earlier ones blindly: the highest version wins.
SOURCES = (
    Source("http://deb.debian.org/debian", "trixie"),
    Source("http://deb.debian.org/debian", "trixie-updates"),
    Source("http://deb.debian.org/debian-security", "trixie-security"),
)

_NO_MAINTAINER_SCRIPTS = "a distroless image never runs maintainer scripts"

# Packages (or virtual packages) that are only needed to run maintainer
# scripts or to manage a system with dpkg/apt. A dependency group whose first
# available alternative is listed here is dropped from the closure and the
# lock records who asked for it.
EXCLUDED = {
    "awk": "base-files pre-depends on awk for its maintainer scripts; "
    + _NO_MAINTAINER_SCRIPTS,
    "mawk": "the awk that base-files' maintainer scripts use; "
    + _NO_MAINTAINER_SCRIPTS,
    "debconf": "asks configuration questions in maintainer scripts (tzdata, ca-certificates); "
    + _NO_MAINTAINER_SCRIPTS,
    "debconf-2.0": "virtual debconf; " + _NO_MAINTAINER_SCRIPTS,
    "dpkg": "the package manager itself; the image is immutable and has no package manager",
    "perl-base": "only used by maintainer scripts and administration tools; "
    + _NO_MAINTAINER_SCRIPTS,
    "install-info": "updates the info directory from maintainer scripts; info pages are dropped",
}


class LockError(Exception):
    """A problem the user must fix; the message says how."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    version: Version
    architecture: str
    url: str
    sha256: str
    size: int
    suite: str
    paragraph: deb822.Packages = dataclasses.field(compare=False, repr=False)

    def relations(self) -> list[list[dict]]:
        groups = []
        for field in ("pre-depends", "depends"):
            groups.extend(self.paragraph.relations[field])
        return groups

    def lock_entry(self) -> dict:
        return {
            "architecture": self.architecture,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "suite": self.suite,
            "url": self.url,
            "version": str(self.version),
        }


@dataclasses.dataclass
class Index:
    """The newest version of every package of one architecture across all sources."""

    packages: dict[str, Candidate] = dataclasses.field(default_factory=dict)
    # virtual name -> [(provider name, provided version or None)]
    provides: dict[str, list[tuple[str, Version | None]]] = dataclasses.field(
        default_factory=dict
    )

    def add_paragraphs(self, source: Source, lines) -> None:
        for paragraph in deb822.Packages.iter_paragraphs(lines, use_apt_pkg=False):
            candidate = Candidate(
                name=paragraph["Package"],
                version=Version(paragraph["Version"]),
                architecture=paragraph["Architecture"],
                url=f"{source.url}/{paragraph['Filename']}",
                sha256=paragraph["SHA256"],
                size=int(paragraph["Size"]),
                suite=source.suite,
                paragraph=paragraph,
            )
            current = self.packages.get(candidate.name)
            if current is None or candidate.version > current.version:
                self.packages[candidate.name] = candidate

    def finish(self) -> None:
        """Builds the Provides map from the winning candidates only."""
        self.provides.clear()
        for candidate in self.packages.values():
            for group in candidate.paragraph.relations["provides"]:
                for provided in group:
                    version = provided["version"][1] if provided["version"] else None
                    self.provides.setdefault(provided["name"], []).append(
                        (candidate.name, Version(version) if version else None)
                    )
        for providers in self.provides.values():
            providers.sort(key=lambda item: item[0])


def satisfies(version: Version | None, constraint: tuple[str, str] | None) -> bool:
    if constraint is None:
        return True
    if version is None:
        return False
    operator, wanted = constraint
    wanted = Version(wanted)
    return {
        "<<": version < wanted,
        "<=": version <= wanted,
        "=": version == wanted,
        ">=": version >= wanted,
        ">>": version > wanted,
    }[operator]


def describe(group: list[dict]) -> str:
    def one(alternative: dict) -> str:
        if alternative["version"]:
            return "{} ({} {})".format(alternative["name"], *alternative["version"])
        return alternative["name"]

    return " | ".join(one(alternative) for alternative in group)


@dataclasses.dataclass
class Resolution:
    packages: dict[str, Candidate]
    # excluded name -> sorted names of the packages that depend on it
    excluded: dict[str, list[str]]


def resolve(
    index: Index, roots: list[str], architecture: str, excluded=EXCLUDED
) -> Resolution:
    """Depends/Pre-Depends closure of `roots`, taking the first available alternative."""
    for root in roots:
        if root in excluded:
            raise LockError(
                f"{root} is listed in base/debian_packages.in but excluded by tools/debian/lock.py "
                f"({excluded[root]}); remove one of the two"
            )
        if root not in index.packages:
            raise LockError(
                f"package {root!r} from base/debian_packages.in does not exist for {architecture} "
                f"in {', '.join(source.suite for source in SOURCES)}; fix its name"
            )
    selected: dict[str, Candidate] = {}
    skipped: dict[str, set[str]] = {}
    queue = sorted(roots)
    while queue:
        name = queue.pop(0)
        if name in selected:
            continue
        candidate = index.packages[name]
        selected[name] = candidate
        for group in candidate.relations():
            choice = _choose(index, group, excluded)
            if choice is None:
                raise LockError(
                    f"{name} {candidate.version} ({architecture}) depends on {describe(group)!r}, "
                    "which no source provides in a satisfying version; the mirror may be "
                    "mid-update (retry later) or the package list needs another package"
                )
            is_excluded, chosen = choice
            if is_excluded:
                skipped.setdefault(chosen, set()).add(name)
            elif chosen not in selected:
                queue.append(chosen)
    return Resolution(
        packages=dict(sorted(selected.items())),
        excluded={name: sorted(by) for name, by in sorted(skipped.items())},
    )


def _choose(index: Index, group: list[dict], excluded) -> tuple[bool, str] | None:
    for alternative in group:
        name, constraint = alternative["name"], alternative["version"]
        if name in excluded:
            return True, name
        real = index.packages.get(name)
        if real is not None and satisfies(real.version, constraint):
            return False, name
        for provider, provided_version in index.provides.get(name, []):
            if provider in excluded:
                return True, provider
            if constraint is None or satisfies(provided_version, constraint):
                return False, provider
    return None


def parse_package_list(text: str) -> list[str]:
    """Package names, one a line; `#` starts a comment."""
    names = []
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LockError(
            f"base/debian_packages.in lists {', '.join(duplicates)} more than once"
        )
    return sorted(names)


def parse_release(text: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """The Release file's Date and its SHA256 table (path -> (sha256, size))."""
    release = deb822.Release(text)
    checksums = {
        entry["name"]: (entry["sha256"], int(entry["size"]))
        for entry in release["SHA256"]
    }
    return release["Date"], checksums


def fetch(url: str, attempts: int = 3) -> bytes:
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise LockError(f"GET {url} failed: HTTP {error.code}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt == attempts:
                raise LockError(
                    f"GET {url} failed after {attempts} attempts: {error}"
                ) from error
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


KEYRINGS = (
    "/usr/share/keyrings/debian-archive-keyring.pgp",
    "/usr/share/keyrings/debian-archive-keyring.gpg",
)


def verified_content(in_release: bytes, keyring: str) -> bytes:
    """The signed text of an InRelease file, checked against the Debian archive keyring."""
    with tempfile.TemporaryDirectory() as scratch:
        signed = Path(scratch, "InRelease")
        signed.write_bytes(in_release)
        content = Path(scratch, "Release")
        if shutil.which("gpgv"):
            command = [
                "gpgv",
                "--quiet",
                "--keyring",
                keyring,
                "--output",
                str(content),
                str(signed),
            ]
        elif shutil.which("sqv"):
            command = [
                "sqv",
                "--keyring",
                keyring,
                "--cleartext",
                "--output",
                str(content),
                str(signed),
            ]
        else:
            raise LockError(
                "neither gpgv nor sqv is installed to check the InRelease signature: "
                "apt-get install gpgv (or pass --no-verify-signature to trust the network)"
            )
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0:
            raise LockError(
                f"bad signature on an InRelease file ({command[0]}):\n{result.stderr.decode()}"
            )
        return content.read_bytes()


def strip_clearsign(in_release: bytes) -> bytes:
    """The text between the PGP armor lines, unverified."""
    text = in_release.decode()
    body = text.split("-----BEGIN PGP SIGNED MESSAGE-----", 1)[-1]
    body = body.split("\n\n", 1)[1]  # armor headers end at the first blank line
    body = body.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    lines = [line.removeprefix("- ") for line in body.split("\n")]
    return "\n".join(lines).encode() + b"\n"


def load_indexes(keyring: str | None, log) -> tuple[dict[str, Index], list[dict]]:
    indexes = {architecture: Index() for architecture in ARCHITECTURES}
    releases = []
    for source in SOURCES:
        base = f"{source.url}/dists/{source.suite}"
        # InRelease, not Release + Release.gpg: a mirror can serve those two out of sync.
        in_release = fetch(f"{base}/InRelease")
        release = (
            verified_content(in_release, keyring)
            if keyring
            else strip_clearsign(in_release)
        )
        date, checksums = parse_release(release.decode())
        releases.append({"date": date, "suite": source.suite, "url": source.url})
        for architecture in ARCHITECTURES:
            path = f"{COMPONENT}/binary-{architecture}/Packages.xz"
            if path not in checksums:
                raise LockError(f"{base}/Release lists no {path}")
            compressed = fetch(f"{base}/{path}")
            sha256, size = checksums[path]
            if (
                hashlib.sha256(compressed).hexdigest() != sha256
                or len(compressed) != size
            ):
                raise LockError(
                    f"{base}/{path} does not match its Release checksum; retry later"
                )
            log(
                f"{source.suite}/{architecture}: {len(compressed)} bytes of Packages.xz"
            )
            indexes[architecture].add_paragraphs(
                source, lzma.decompress(compressed).decode().splitlines()
            )
    for index in indexes.values():
        index.finish()
    return indexes, releases


def render_lock(
    inputs: list[str], releases: list[dict], resolutions: dict[str, Resolution]
) -> str:
    excluded: dict[str, set[str]] = {}
    for resolution in resolutions.values():
        for name, required_by in resolution.excluded.items():
            excluded.setdefault(name, set()).update(required_by)
    lock = {
        "_generated_by": f"{REGENERATE_COMMAND} (from base/debian_packages.in; do not edit)",
        "excluded": {
            name: {"reason": EXCLUDED[name], "required_by": sorted(required_by)}
            for name, required_by in sorted(excluded.items())
        },
        "inputs": inputs,
        "packages": {
            architecture: [
                candidate.lock_entry() for candidate in resolution.packages.values()
            ]
            for architecture, resolution in sorted(resolutions.items())
        },
        "releases": releases,
    }
    return json.dumps(lock, indent=2, sort_keys=True) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as out:
        out.write(text)
    os.replace(out.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    workspace = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    parser.add_argument(
        "--input", type=Path, default=workspace / "base/debian_packages.in"
    )
    parser.add_argument("--output", type=Path, default=workspace / "base/debian.lock")
    parser.add_argument(
        "--keyring", help="Debian archive keyring (default: the system's)"
    )
    parser.add_argument(
        "--no-verify-signature",
        action="store_true",
        help="trust Release files without checking signatures",
    )
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        inputs = parse_package_list(args.input.read_text())
        keyring = None
        if not args.no_verify_signature:
            keyring = args.keyring or next(
                (path for path in KEYRINGS if os.path.exists(path)), None
            )
            if keyring is None:
                raise LockError(
                    "no Debian archive keyring found (apt-get install debian-archive-keyring, "
                    "or pass --keyring PATH or --no-verify-signature)"
                )
        indexes, releases = load_indexes(keyring, log)
        resolutions = {
            architecture: resolve(indexes[architecture], inputs, architecture)
            for architecture in ARCHITECTURES
        }
    except LockError as error:
        log(f"error: {error}")
        return 1
    write_atomically(args.output, render_lock(inputs, releases, resolutions))
    for architecture, resolution in resolutions.items():
        total = sum(candidate.size for candidate in resolution.packages.values())
        log(
            f"{architecture}: {len(resolution.packages)} packages, {total / 1e6:.1f} MB of .deb files"
        )
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
