"""The Depends/Pre-Depends closure of a package list, as the lock pins it."""

from __future__ import annotations

import dataclasses

from debian.debian_support import Version

from tools.debian.lockfile.archive import Candidate, Index
from tools.debian.lockfile.errors import LockError

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


@dataclasses.dataclass
class Resolution:
    packages: dict[str, Candidate]
    # excluded name -> sorted names of the packages that depend on it
    excluded: dict[str, list[str]]


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


def parse_package_list(text: str, where: str = "base/debian_packages.in") -> list[str]:
    """Package names, one a line; `#` starts a comment."""
    names = []
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LockError(f"{where} lists {', '.join(duplicates)} more than once")
    return sorted(names)


def resolve(
    index: Index,
    roots: list[str],
    architecture: str,
    excluded=EXCLUDED,
    where: str = "base/debian_packages.in",
) -> Resolution:
    """Depends/Pre-Depends closure of `roots` (listed in `where`), taking the first available
    alternative."""
    for root in roots:
        if root in excluded:
            raise LockError(
                f"{root} is listed in {where} but excluded by tools/debian/lockfile/resolve.py "
                f"({excluded[root]}); remove one of the two"
            )
        if root not in index.packages:
            suites = sorted({c.suite for c in index.packages.values()})
            raise LockError(
                f"package {root!r} from {where} does not exist for {architecture} "
                f"in {', '.join(suites)}; fix its name"
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
