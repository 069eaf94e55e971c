"""Layers made from wheel files (--py-wheel) are the layers made from the installed wheels.

Images read wheels without unpacking them; tests and binaries import the trees wheel_library
installs with tools/pypi/install_wheel.py. Both must place the same files, or an image would
differ from what its tests ran.
"""

import os
import stat
import sys
import zipfile

import pytest

from tools.oci.common import UsageError
from tools.oci.tests.oci_testing import make_layer, read_bytes, tar_members
from tools.pypi import install_wheel

RUNNING_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SITE = "usr/local/lib/python3.13/dist-packages/"


def make_wheel(path, members):
    """A wheel with {name: (bytes, unix mode)} members, as zip tools write them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (data, mode) in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16
            archive.writestr(info, data)
    return str(path)


DEMO_WHEEL = {
    "demo/__init__.py": (b"from demo.core import VALUE\n", 0o644),
    "demo/core.py": (b"VALUE = 42\n", 0o644),
    "demo/native.so": (b"\x7fELF not really", 0o755),
    "demo/__pycache__/core.cpython-313.pyc": (b"stale timestamp pyc", 0o644),
    "demo/data file.txt": (b"a name labels cannot hold", 0o644),
    "demo/py2.py": (b"print 'python 2'\n", 0o644),
    "demo-1.0.dist-info/RECORD": (b"demo/__init__.py,,\n", 0o644),
    "demo-1.0.data/purelib/demo_extra.py": (b"EXTRA = True\n", 0o644),
    "demo-1.0.data/scripts/demo-cli": (b"#!python\n", 0o755),
    "demo-1.0.data/headers/demo.h": (b"int demo;\n", 0o644),
}


def installed_files(tmp_path, wheel):
    """--py-file arguments for the tree install_wheel.py makes, as Bazel's runfiles name them."""
    site_packages = tmp_path / "external" / "pypi_demo" / "site-packages"
    install_wheel.install(wheel, str(site_packages), {})
    arguments = []
    for root, _, names in os.walk(site_packages):
        for name in sorted(names):
            if " " in name or name.endswith(".pyc"):
                continue  # what the repository's glob left out, as wheels.py does
            path = os.path.join(root, name)
            relative = os.path.relpath(path, site_packages)
            arguments += ["--py-file", f"../pypi_demo/site-packages/{relative}", path]
    return arguments


@pytest.mark.parametrize("compile_pyc", [False, True])
def test_a_wheel_layer_is_the_installed_wheel_layer(tmp_path, compile_pyc):
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", DEMO_WHEEL)
    compile_args = ["--py-compile", RUNNING_PYTHON] if compile_pyc else []
    from_wheel, _, wheel_blob = make_layer(
        tmp_path, "from_wheel", "--py-wheel", wheel, *compile_args
    )
    from_tree, _, tree_blob = make_layer(
        tmp_path,
        "from_tree",
        *installed_files(tmp_path, wheel),
        "--py-import-root", "pypi_demo/site-packages",
        *compile_args,
    )  # fmt: skip
    assert read_bytes(wheel_blob) == read_bytes(tree_blob)
    assert from_wheel["descriptor"] == from_tree["descriptor"]

    files = {
        name: content
        for name, (info, content) in tar_members(wheel_blob).items()
        if info.isreg()
    }
    expected = {
        "demo-1.0.dist-info/RECORD",
        "demo/__init__.py",
        "demo/core.py",
        "demo/native.so",
        "demo/py2.py",
        "demo_extra.py",
    }
    if compile_pyc:
        tag = sys.implementation.cache_tag
        expected |= {
            f"__pycache__/demo_extra.{tag}.pyc",
            f"demo/__pycache__/__init__.{tag}.pyc",
            f"demo/__pycache__/core.{tag}.pyc",
        }  # py2.py does not compile; the wheel's own stale pyc is not carried
    assert set(files) == {SITE + path for path in expected}
    assert files[SITE + "demo/core.py"] == b"VALUE = 42\n"


def test_wheels_with_a_conflicting_file_fail_naming_both(tmp_path):
    first = make_wheel(
        tmp_path / "a-1.0-py3-none-any.whl", {"shared.py": (b"A", 0o644)}
    )
    second = make_wheel(
        tmp_path / "b-1.0-py3-none-any.whl", {"shared.py": (b"B", 0o644)}
    )
    with pytest.raises(UsageError, match="a-1.0-py3-none-any.whl:shared.py.*b-1.0"):
        make_layer(tmp_path, "layer", "--py-wheel", first, "--py-wheel", second)


def test_a_file_that_is_not_a_wheel_is_named(tmp_path):
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="broken-1.0-py3-none-any.whl can not be read"):
        make_layer(tmp_path, "layer", "--py-wheel", str(broken))


def test_the_installer_writes_only_the_scripts_asked_for(tmp_path):
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", DEMO_WHEEL)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install_wheel.install(wheel, str(tmp_path / "site"), {"demo-cli": str(bin_dir)})
    assert os.listdir(bin_dir) == ["demo-cli"]
    assert os.stat(bin_dir / "demo-cli").st_mode & 0o777 == 0o755
    assert (tmp_path / "site" / "demo_extra.py").read_bytes() == b"EXTRA = True\n"
    assert not (tmp_path / "site" / "demo-1.0.data").exists()
    with pytest.raises(SystemExit, match="has no script missing"):
        install_wheel.install(wheel, str(tmp_path / "again"), {"missing": str(bin_dir)})
