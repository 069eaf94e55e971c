"""Layer compression: a name and level in, a streaming compressor out.

Every compressor has `compress(bytes) -> bytes` and `flush() -> bytes`, and is fed the tar in
fixed 1 MiB chunks (ChunkedCompressor), so its bytes depend only on the tar's bytes: not on the
CPU, nor on how tarfile happens to size its writes.

gzip is zlib-ng at level 1, through the `zlib-ng` wheel pinned in requirements.lock. Its
output is the same on x86_64 (SSE2 to AVX-512) and aarch64, so a layer built on an arm64 host
gets the same digest as on an x86_64 one; ISA-L, about 1.5 times as fast with 13% smaller
output, writes other bytes on aarch64 (bench/oci has the numbers).
"""

CHUNK_SIZE = 1 << 20

# compression -> (default level, lowest, highest)
LEVELS = {"gzip": (1, 0, 9), "zstd": (3, 1, 22), "none": (0, 0, 0)}


def _gzip(level):
    from zlib_ng import zlib_ng

    # wbits 31: a single gzip member whose header has no file name and mtime 0
    return zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)


def _zstd(level):
    import zstandard

    return zstandard.ZstdCompressor(level=level).compressobj()


class _Uncompressed:
    def compress(self, data):
        return data

    def flush(self):
        return b""


_FACTORIES = {"gzip": _gzip, "zstd": _zstd, "none": lambda level: _Uncompressed()}


def check_level(compression, level):
    """An error message if `level` is outside what `compression` takes, else None."""
    _, lowest, highest = LEVELS[compression]
    if level is not None and not lowest <= level <= highest:
        return f"--level for {compression} must be {lowest}..{highest}"
    return None


def new(compression, level=None):
    """A new streaming compressor; level None is the compression's default."""
    default, _, _ = LEVELS[compression]
    return _FACTORIES[compression](default if level is None else level)


class ChunkedCompressor:
    """A file-like sink that compresses what is written to it into `sink`, in fixed-size chunks.

    Compressors may emit different (equally valid) bytes depending on how their input is split
    into calls, and the sizes of tarfile's writes are an implementation detail of the Python
    version; fixed chunks make the blob's bytes depend only on the tar bytes.
    """

    def __init__(self, sink, compressor):
        self.sink = sink
        self.compressor = compressor
        self._pending = bytearray()

    def write(self, data):
        self._pending += data
        if len(self._pending) >= CHUNK_SIZE:
            view = memoryview(self._pending)
            whole = len(view) - len(view) % CHUNK_SIZE
            for start in range(0, whole, CHUNK_SIZE):
                self.sink.write(
                    self.compressor.compress(view[start : start + CHUNK_SIZE])
                )
            view.release()
            del self._pending[:whole]
        return len(data)

    def close(self):
        self.sink.write(self.compressor.compress(bytes(self._pending)))
        self.sink.write(self.compressor.flush())
        self._pending.clear()
