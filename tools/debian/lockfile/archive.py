"""Debian's mirror: signed InRelease files, the Packages.xz indexes they vouch for, and the
candidate apt would install for each package name."""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

from tools.debian.lockfile.errors import LockError
from tools.debian.lockfile.pins import Preferences

ARCHITECTURES = ("amd64", "arm64")
COMPONENT = "main"
KEYRINGS = (
    "/usr/share/keyrings/debian-archive-keyring.pgp",
    "/usr/share/keyrings/debian-archive-keyring.gpg",
)


@dataclasses.dataclass(frozen=True)
class Source:
    url: str
    suite: str


TRIXIE = (
    Source("http://deb.debian.org/debian", "trixie"),
    Source("http://deb.debian.org/debian", "trixie-updates"),
    Source("http://deb.debian.org/debian-security", "trixie-security"),
)


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
    """Per package of one architecture, the version apt would pick across all sources: the
    highest pin priority (`preferences`), then the highest version."""

    preferences: Preferences = dataclasses.field(default_factory=Preferences)
    packages: dict[str, Candidate] = dataclasses.field(default_factory=dict)
    # virtual name -> [(provider name, provided version or None)]
    provides: dict[str, list[tuple[str, Version | None]]] = dataclasses.field(
        default_factory=dict
    )

    def _rank(self, candidate: Candidate) -> tuple[int, Version]:
        return (
            self.preferences.priority(candidate.name, candidate.suite),
            candidate.version,
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
            if current is None or self._rank(candidate) > self._rank(current):
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


class Mirror:
    """Downloads each suite's Packages.xz once, for every lock that uses the suite."""

    def __init__(self, keyring: str | None, log):
        self.keyring, self.log = keyring, log
        self.downloaded: dict[Source, tuple[dict, dict[str, bytes]]] = {}

    def suite(self, source: Source) -> tuple[dict, dict[str, bytes]]:
        """The release entry ({date, suite, url}) and the decompressed index per architecture."""
        if source not in self.downloaded:
            self.downloaded[source] = self._download(source)
        return self.downloaded[source]

    def _download(self, source: Source) -> tuple[dict, dict[str, bytes]]:
        base = f"{source.url}/dists/{source.suite}"
        # InRelease, not Release + Release.gpg: a mirror can serve those two out of sync.
        in_release = fetch(f"{base}/InRelease")
        release = (
            verified_content(in_release, self.keyring)
            if self.keyring
            else strip_clearsign(in_release)
        )
        date, checksums = parse_release(release.decode())
        indexes = {}
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
            self.log(
                f"{source.suite}/{architecture}: {len(compressed)} bytes of Packages.xz"
            )
            indexes[architecture] = lzma.decompress(compressed)
        return {"date": date, "suite": source.suite, "url": source.url}, indexes

    def load(
        self, sources: tuple[Source, ...], preferences: Preferences
    ) -> tuple[dict[str, Index], list[dict]]:
        indexes = {
            architecture: Index(preferences=preferences)
            for architecture in ARCHITECTURES
        }
        releases = []
        for source in sources:
            release, packages = self.suite(source)
            releases.append(release)
            for architecture in ARCHITECTURES:
                indexes[architecture].add_paragraphs(
                    source, packages[architecture].decode().splitlines()
                )
        for index in indexes.values():
            index.finish()
        return indexes, releases
