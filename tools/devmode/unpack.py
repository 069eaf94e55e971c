"""Root file systems of images, unpacked once and cached by the digests of their layers.

The root for layers L1..Lk lives in `<cache>/roots/<chain id of L1..Lk>`, where the chain id
hashes the layer digests in order (as OCI's ChainID does with diff ids). A new image starts
from the longest cached prefix of its layers: a hard-linked copy of it, with the remaining
layers applied on top. The root of all layers but the last is kept too, so an edited handler
re-applies only its own small layer, and the six handler images share one copy of the base.
Roots are built in a staging directory and renamed into place, so an interrupted unpack
leaves nothing that a later run would use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tools.devmode.image import Image


def default_cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "receipt-lambdas" / "devmode"


def chain_ids(digests: Sequence[str]) -> list[str]:
    """chain_ids(d)[k] identifies the file system made by layers d[0..k]."""
    ids, chain = [], ""
    for digest in digests:
        chain = hashlib.sha256(f"{chain} {digest}".encode()).hexdigest()
        ids.append(chain)
    return ids


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def apply_layer(blob: Path, root: Path) -> None:
    """Applies one layer to `root` as a container runtime does: whiteouts delete, entries replace."""
    with tarfile.open(blob, "r|*") as archive:
        for info in archive:
            name = info.name.lstrip("/").removeprefix("./")
            parent, _, base = name.rpartition("/")
            target_dir = root / parent
            if (
                base == ".wh..wh..opq"
            ):  # opaque directory: drop what lower layers put there
                for child in target_dir.iterdir() if target_dir.is_dir() else ():
                    _remove(child)
                continue
            if base.startswith(".wh."):
                _remove(target_dir / base.removeprefix(".wh."))
                continue
            existing = root / name
            # Replacing (not writing through) also keeps hard-linked copies of lower roots intact.
            if not (info.isdir() and existing.is_dir() and not existing.is_symlink()):
                _remove(existing)
            # "tar": no absolute paths, no escaping `root`, no setuid bits; symlinks kept as they are.
            archive.extract(info, root, set_attrs=True, filter="tar")


def unpack(blobs: Sequence[Path], root: Path) -> Path:
    """Applies `blobs` in order to a new directory `root` (no cache)."""
    root.mkdir(parents=True, exist_ok=True)
    for blob in blobs:
        apply_layer(blob, root)
    root.chmod(
        0o755
    )  # as a container's / is; a temporary directory's 0700 locks out nonroot
    return root


def _hard_link_copy(source: Path, destination: Path) -> None:
    shutil.copytree(source, destination, symlinks=True, copy_function=os.link)


class RootCache:
    """Unpacked roots under `directory`; safe to share between processes (one builds, others wait)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.roots = directory / "roots"
        self.layers_applied = (
            0  # how many layers this instance unpacked; 0 when all were cached
        )

    def root_for(self, image: Image) -> Path:
        blobs = image.layer_blobs()
        ids = chain_ids(image.layer_digests)
        if not ids:
            raise ValueError("the image has no layers")
        self.roots.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cached = next(
                (
                    k
                    for k in range(len(ids), 0, -1)
                    if (self.roots / ids[k - 1]).is_dir()
                ),
                0,
            )
            # Keep the root below the top layer, and the top one; intermediate ones are not reused.
            for stop in sorted({len(ids) - 1, len(ids)}):
                if stop > cached:
                    self._build(
                        blobs[cached:stop],
                        ids[cached - 1] if cached else None,
                        ids[stop - 1],
                    )
                    cached = stop
        return self.roots / ids[-1]

    def _build(self, blobs: Sequence[Path], below: str | None, chain_id: str) -> None:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.roots))
        try:
            root = staging / "root"
            if below is None:
                root.mkdir()
            else:
                _hard_link_copy(self.roots / below, root)
            unpack(blobs, root)
            root.rename(self.roots / chain_id)
            self.layers_applied += len(blobs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
