"""apt preferences files: the priority apt gives each package of each suite.

The worker image's lock is resolved with the same preferences files the worker environment is
provisioned with (tools/buildenv/apt-preferences, worker-apt-preferences), so the two never
disagree on which packages come from forky.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

from debian import deb822

from tools.debian.lockfile.errors import LockError

# apt's priority for a version with no pin: the suites are all "not target releases".
DEFAULT_PRIORITY = 500


@dataclasses.dataclass(frozen=True)
class Pin:
    patterns: tuple[str, ...]
    suite: str
    priority: int

    def matches(self, name: str, suite: str) -> bool:
        return suite == self.suite and any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns
        )

    @property
    def general(self) -> bool:
        return self.patterns == ("*",)


@dataclasses.dataclass(frozen=True)
class Preferences:
    pins: tuple[Pin, ...] = ()

    def priority(self, name: str, suite: str) -> int:
        """As apt decides: the first matching pin naming packages, else a `Package: *` pin,
        else 500."""
        specific = [pin for pin in self.pins if not pin.general]
        general = [pin for pin in self.pins if pin.general]
        for pin in (*specific, *general):
            if pin.matches(name, suite):
                return pin.priority
        return DEFAULT_PRIORITY

    @property
    def suites(self) -> list[str]:
        return sorted({pin.suite for pin in self.pins})


def parse_preferences(text: str, where: str) -> list[Pin]:
    pins = []
    for stanza in deb822.Deb822.iter_paragraphs(text.splitlines(), use_apt_pkg=False):
        if not stanza:
            continue
        pin = stanza.get("Pin", "")
        kind, _, selector = pin.partition(" ")
        if kind != "release" or not selector.startswith("n="):
            raise LockError(
                f"{where}: only `Pin: release n=SUITE` is understood, not {pin!r}; "
                "pin by suite name"
            )
        try:
            priority = int(stanza["Pin-Priority"])
            patterns = tuple(stanza["Package"].split())
        except (KeyError, ValueError) as error:
            raise LockError(
                f"{where}: a stanza needs Package and a numeric Pin-Priority ({error})"
            ) from None
        pins.append(Pin(patterns, selector.removeprefix("n="), priority))
    return pins


def read_preferences(paths: list[Path]) -> Preferences:
    pins = []
    for path in paths:
        pins.extend(parse_preferences(path.read_text(), str(path)))
    return Preferences(tuple(pins))
