"""A built image as Bazel leaves it: manifest.json, config.json and an OCI layout directory."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path


class ImageError(Exception):
    """The image directory is missing or not an image this tool can run."""


@dataclass(frozen=True)
class Image:
    manifest_path: Path
    config_path: Path
    layout: Path

    @classmethod
    def from_directory(cls, directory: Path) -> Image:
        """An image from a directory holding manifest.json, config.json and layout/."""
        image = cls(
            directory / "manifest.json", directory / "config.json", directory / "layout"
        )
        image.check()
        return image

    def check(self) -> None:
        for path in (self.manifest_path, self.config_path, self.layout / "blobs"):
            if not path.exists():
                raise ImageError(
                    f"{path} is missing: build the image first (tools/bazel build //handlers/<name>:image)"
                )

    @functools.cached_property
    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    @functools.cached_property
    def config(self) -> dict:
        return json.loads(self.config_path.read_text())

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    @property
    def runtime_config(self) -> dict:
        return self.config.get("config") or {}

    @property
    def command(self) -> list[str]:
        """ENTRYPOINT + CMD: what Lambda starts."""
        argv = list(self.runtime_config.get("Entrypoint") or []) + list(
            self.runtime_config.get("Cmd") or []
        )
        if not argv:
            raise ImageError("the image has neither an Entrypoint nor a Cmd to run")
        return argv

    @property
    def entrypoint(self) -> list[str]:
        return list(self.runtime_config.get("Entrypoint") or [])

    @property
    def workdir(self) -> str:
        return self.runtime_config.get("WorkingDir") or "/"

    @property
    def env(self) -> dict[str, str]:
        entries = self.runtime_config.get("Env") or []
        return dict(entry.split("=", 1) for entry in entries)

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    def blob(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.layout / "blobs" / algorithm / hex_digest

    def layer_blobs(self) -> list[Path]:
        return [self.blob(digest) for digest in self.layer_digests]
