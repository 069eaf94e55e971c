"""The lock file: JSON with sorted keys, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tools.debian.lockfile.resolve import EXCLUDED, Resolution

REGENERATE_COMMAND = "tools/bazel run //tools/debian:lock"


def render_lock(
    inputs: list[str],
    releases: list[dict],
    resolutions: dict[str, Resolution],
    made_from: str = "base/debian_packages.in",
) -> str:
    excluded: dict[str, set[str]] = {}
    for resolution in resolutions.values():
        for name, required_by in resolution.excluded.items():
            excluded.setdefault(name, set()).update(required_by)
    lock = {
        "_generated_by": f"{REGENERATE_COMMAND} (from {made_from}; do not edit)",
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
