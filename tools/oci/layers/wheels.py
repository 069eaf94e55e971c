"""Wheel files as layer entries, read from the zip without unpacking it.

Each member goes where an installer puts it (tools/pypi/install_wheel.py's `destination`), so a
layer made from wheels has the same entries as one made from the installed wheel_library trees.
As in those trees, .pyc files shipped in a wheel are left out (the layer compiles its own) and so
are names with spaces.
"""

import zipfile

from tools.pypi.install_wheel import destination


def site_packages_members(archive: zipfile.ZipFile):
    """Yields (ZipInfo, path below site-packages) of the wheel's files a layer carries."""
    for info in archive.infolist():
        if info.is_dir():
            continue
        place = destination(info.filename)
        if place is None or place[0] != "site-packages":
            continue
        path = place[1]
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".pyc") or " " in name:
            continue
        yield info, path
