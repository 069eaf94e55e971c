import json
import os
import shutil
from pathlib import Path

import pytest
from debian.debian_support import Version

from tools.debian.lockfile import archive, pins, resolve, write
from tools.debian.lockfile.errors import LockError

TESTDATA = Path(__file__).parent / "testdata"
MAIN = archive.Source("http://mirror.test/debian", "trixie")
SECURITY = archive.Source("http://mirror.test/debian-security", "trixie-security")


@pytest.fixture
def index() -> archive.Index:
    index = archive.Index()
    index.add_paragraphs(MAIN, (TESTDATA / "Packages.main").read_text().splitlines())
    index.add_paragraphs(
        SECURITY, (TESTDATA / "Packages.security").read_text().splitlines()
    )
    index.finish()
    return index


def test_newest_version_across_sources_wins(index):
    ssl = index.packages["libssl3t64"]
    assert str(ssl.version) == "3.5.1-1+deb13u1"
    assert ssl.url == (
        "http://mirror.test/debian-security/pool/updates/main/o/openssl/libssl3t64_3.5.1-1+deb13u1_amd64.deb"
    )
    assert ssl.sha256 == "41" * 32
    assert ssl.suite == "trixie-security"
    # An older version in a later source does not replace a newer one.
    assert str(index.packages["libc6"].version) == "2.41-12"
    assert index.packages["libc6"].suite == "trixie"


def test_closure_follows_pre_depends_first_alternatives_and_provides(index):
    resolution = resolve.resolve(index, ["app"], "amd64")
    assert list(resolution.packages) == [
        "app",
        "libc6",
        "libgcc-s1",  # through Provides: libgcc1
        "libssl3t64",
        "media-types",  # the first alternative; mime-support is not pulled in
        "zlib1g",
    ]


def test_maintainer_script_dependencies_are_excluded_and_recorded(index):
    resolution = resolve.resolve(index, ["app"], "amd64")
    assert "debconf" not in resolution.packages
    assert "mawk" not in resolution.packages
    assert resolution.excluded == {"awk": ["app"], "debconf": ["app"]}


def test_unsatisfiable_version_names_the_package_and_relation(index):
    with pytest.raises(
        LockError,
        match=r"needs-newer-zlib 1\.0 \(amd64\) depends on 'zlib1g \(>= 1:2\.0\)'",
    ):
        resolve.resolve(index, ["needs-newer-zlib"], "amd64")


def test_unknown_root_is_an_error_naming_it(index):
    with pytest.raises(
        LockError,
        match="'pyhton3' from base/debian_packages.in does not exist for amd64",
    ):
        resolve.resolve(index, ["pyhton3"], "amd64")


def test_excluded_root_is_an_error(index):
    with pytest.raises(
        LockError,
        match="debconf is listed in base/debian_packages.in but excluded",
    ):
        resolve.resolve(index, ["debconf"], "amd64")


def test_version_constraints():
    version = Version("1:2.0-1")
    assert resolve.satisfies(version, (">=", "1:1.9"))
    assert not resolve.satisfies(version, ("<<", "1:2.0-1"))
    assert resolve.satisfies(version, ("=", "1:2.0-1"))
    assert not resolve.satisfies(version, (">>", "2:0"))
    assert not resolve.satisfies(None, (">=", "1"))
    assert resolve.satisfies(None, None)


def test_package_list_ignores_comments_and_rejects_duplicates():
    assert resolve.parse_package_list(
        "# runtime\nzlib1g  # compression\n\nlibc6\n"
    ) == [
        "libc6",
        "zlib1g",
    ]
    with pytest.raises(LockError, match="lists libc6 more than once"):
        resolve.parse_package_list("libc6\nlibc6\n")


def test_rendered_lock_is_sorted_and_names_its_generator(index):
    resolutions = {
        "arm64": resolve.resolve(index, ["zlib1g"], "arm64"),
        "amd64": resolve.resolve(index, ["app"], "amd64"),
    }
    releases = [
        {"date": "Sat, 21 Nov 2026 09:15:44 UTC", "suite": "trixie", "url": MAIN.url}
    ]
    text = write.render_lock(["app"], releases, resolutions)
    assert text == write.render_lock(
        ["app"], releases, dict(reversed(resolutions.items()))
    )
    data = json.loads(text)
    assert text.startswith('{\n  "_generated_by": "tools/bazel run //tools/debian:lock')
    assert list(data["packages"]) == ["amd64", "arm64"]
    names = [entry["name"] for entry in data["packages"]["amd64"]]
    assert names == sorted(names)
    assert data["packages"]["amd64"][0] == {
        "architecture": "amd64",
        "name": "app",
        "sha256": "11" * 32,
        "size": 1000,
        "suite": "trixie",
        "url": "http://mirror.test/debian/pool/main/a/app/app_1.0-1_amd64.deb",
        "version": "1.0-1",
    }
    assert data["excluded"]["debconf"]["required_by"] == ["app"]
    assert "maintainer scripts" in data["excluded"]["debconf"]["reason"]
    assert data["releases"] == releases


def test_release_date_and_checksums_come_from_the_signed_text():
    text = archive.strip_clearsign(
        (TESTDATA / "trixie-updates.InRelease").read_bytes()
    ).decode()
    date, checksums = archive.parse_release(text)
    assert date.endswith("UTC")
    sha256, size = checksums["main/binary-arm64/Packages.xz"]
    assert len(sha256) == 64
    assert size > 0


def _keyring() -> str | None:
    if not (shutil.which("gpgv") or shutil.which("sqv")):
        return None
    return next((path for path in archive.KEYRINGS if os.path.exists(path)), None)


@pytest.mark.skipif(
    _keyring() is None, reason="needs gpgv or sqv and debian-archive-keyring"
)
def test_signature_check_accepts_the_archive_and_rejects_tampering():
    signed = (TESTDATA / "trixie-updates.InRelease").read_bytes()
    content = archive.verified_content(signed, _keyring())
    assert content.startswith(b"Origin: Debian\n")
    # gpgv keeps the newline before the signature armor, sqv does not (RFC 4880 drops it).
    assert content.rstrip(b"\n") == archive.strip_clearsign(signed).rstrip(b"\n")
    tampered = signed.replace(b"Suite: stable-updates", b"Suite: stable-updatez")
    assert tampered != signed
    with pytest.raises(LockError, match="bad signature"):
        archive.verified_content(tampered, _keyring())


PREFERENCES = """\
# Everything from trixie, except what is pinned below.
Package: *
Pin: release n=forky
Pin-Priority: 100

# A comment between stanzas.
Package: buildbox* libabsl* libgcc-s1
Pin: release n=forky
Pin-Priority: 990
"""
FORKY = archive.Source("http://mirror.test/debian", "forky")


def pinned_index(preferences_text: str) -> archive.Index:
    preferences = pins.Preferences(
        tuple(pins.parse_preferences(preferences_text, "prefs"))
    )
    index = archive.Index(preferences=preferences)
    for source, name in ((MAIN, "Packages.main"), (FORKY, "Packages.forky")):
        index.add_paragraphs(source, (TESTDATA / name).read_text().splitlines())
    index.finish()
    return index


def test_pinned_packages_come_from_forky_and_the_rest_from_trixie():
    index = pinned_index(PREFERENCES)
    resolution = resolve.resolve(index, ["buildbox"], "amd64")
    suites = {name: c.suite for name, c in resolution.packages.items()}
    assert suites == {
        "buildbox": "forky",  # matches buildbox*
        "libabsl20260526": "forky",
        "libc6": "trixie",  # forky's is newer but only at priority 100
        "libgcc-s1": "forky",  # named by the pin: forky's 16.x satisfies buildbox
    }
    assert str(resolution.packages["libgcc-s1"].version) == "16.1.0-1"


def test_without_pins_the_highest_version_wins_and_unmet_versions_fail():
    index = pinned_index("")
    assert index.packages["libc6"].suite == "forky"
    index = pinned_index(PREFERENCES.replace(" libgcc-s1", ""))
    with pytest.raises(LockError, match=r"depends on 'libgcc-s1 \(>= 16\)'"):
        resolve.resolve(index, ["buildbox"], "amd64")


def test_the_worker_preferences_files_parse_and_pin_buildbox_to_forky():
    buildenv = Path(__file__).parents[1] / "buildenv"
    preferences = pins.read_preferences(
        [buildenv / "apt-preferences", buildenv / "worker-apt-preferences"]
    )
    assert preferences.priority("buildbox", "forky") == 990
    assert preferences.priority("libstdc++6", "forky") == 990
    assert preferences.priority("python3", "forky") == 100
    assert preferences.priority("python3", "trixie") == 500


def test_a_pin_other_than_by_suite_name_is_an_error():
    with pytest.raises(LockError, match="only `Pin: release n=SUITE`"):
        pins.parse_preferences(
            "Package: *\nPin: origin deb.debian.org\nPin-Priority: 100\n", "prefs"
        )
