"""Writes a tar the way careless packers do (a builder's uid/gid and names, file mtimes, odd
modes, hard links) to show that oci_image re-normalizes plain tars. Its own bytes are fixed,
so the example stays cacheable."""

import io
import sys
import tarfile


def main(output):
    with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as archive:
        for name, kind, mode, data, link in [
            ("./usr", tarfile.DIRTYPE, 0o700, None, ""),
            ("./usr/bin/tool", tarfile.REGTYPE, 0o4711, b"#!/bin/sh\necho tool\n", ""),
            ("./usr/bin/another-name", tarfile.LNKTYPE, 0o4711, None, "./usr/bin/tool"),
            ("./usr/share/doc/notes", tarfile.REGTYPE, 0o600, b"private notes\n", ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.uid, info.gid, info.uname, info.gname = (
                1000,
                1000,
                "builder",
                "builder",
            )
            info.mtime = 1_700_000_000
            info.size = len(data) if data else 0
            archive.addfile(info, io.BytesIO(data) if data else None)


if __name__ == "__main__":
    main(sys.argv[1])
