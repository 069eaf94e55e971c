"""Writes a layer's entries as one normalized tar stream, compressed (compressors.py), and
returns its digest, size and diff_id."""

import hashlib
import tarfile

from tools.oci import common, compressors


class _HashingWriter:
    def __init__(self, sink):
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def tell(self):
        return self.size

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


def write_layer(entries, blob_file, compression="gzip", level=None, mtime=0):
    """Writes the tar stream of `entries` compressed into blob_file; returns (digest, size, diff_id)."""
    compressed = _HashingWriter(blob_file)
    compressor = compressors.ChunkedCompressor(
        compressed, compressors.new(compression, level)
    )
    uncompressed = _HashingWriter(compressor)
    with tarfile.open(
        fileobj=uncompressed,
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        copybufsize=1 << 20,
    ) as archive:
        for entry in entries:
            archive.addfile(*_tar_member(entry, mtime))
    compressor.close()
    return compressed.digest(), compressed.size, uncompressed.digest()


def _tar_member(entry, mtime):
    info = tarfile.TarInfo(entry.path)
    info.mtime = mtime
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        return info, None
    if entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.linkname
        return info, None
    if entry.kind == "hardlink":
        info.type = tarfile.LNKTYPE
        info.linkname = entry.linkname
        return info, None
    info.type = tarfile.REGTYPE
    info.size = entry.size
    return info, _SizeCheckedReader(entry)


class _SizeCheckedReader:
    """Opens the entry's data only when tarfile copies it, and fails clearly if the file shrank since it was listed."""

    def __init__(self, entry):
        self.entry = entry
        self.handle = None
        self.remaining = entry.size

    def read(self, size):
        if self.handle is None:
            self.handle = self.entry.open_data()
        data = self.handle.read(min(size, self.remaining))
        self.remaining -= len(data)
        if not data and size:
            raise common.UsageError(
                f"{self.entry.origin} became shorter while the layer was written"
            )
        if self.remaining == 0:
            self.handle.close()
        return data
