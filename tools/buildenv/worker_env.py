"""The remote-execution worker environment: the build environment's recipe plus buildbox,
PostgreSQL and a BuildGrid venv.

It is a separate root file system (not a change to packages.txt) so that adding remote execution
changes neither the build environment nor its hash. Actions run on a worker see the same Debian
packages as local actions, plus these. It lives in `<cache>/worker-env/<hash>/` and is made by
rootfs.py like the build environment.
"""

import shlex
from pathlib import Path

import rootfs

HERE = Path(__file__).resolve().parent
BUILD_PACKAGES = HERE / "packages.txt"
BUILD_PREFERENCES = HERE / "apt-preferences"
WORKER_PACKAGES = HERE / "worker-packages.txt"
WORKER_PREFERENCES = HERE / "worker-apt-preferences"
REQUIREMENTS = HERE / "worker-requirements.txt"
RECIPE_FILES = [
    BUILD_PACKAGES,
    BUILD_PREFERENCES,
    WORKER_PACKAGES,
    WORKER_PREFERENCES,
    REQUIREMENTS,
]
# Bump when the provisioning steps below change in a way that needs a new environment.
RECIPE_REVISION = "1"
VENV = "/opt/buildgrid"
BGD = f"{VENV}/bin/bgd"


def recipe_hash() -> str:
    return rootfs.recipe_hash(RECIPE_FILES, RECIPE_REVISION)


def install_buildgrid_hook() -> str:
    """An mmdebstrap customize hook installing the locked BuildGrid into a venv.

    The host's environment is cleared (its PIP_* and SSL_* variables name host files); pip then
    trusts the CA bundle update-ca-certificates made, which includes the host's extra CAs."""
    requirements = "/tmp/worker-requirements.txt"
    return (
        f'cp {shlex.quote(str(REQUIREMENTS))} "$1{requirements}" && '
        'env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root chroot "$1" sh -c '
        f'"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet --no-cache-dir '
        "--disable-pip-version-check --only-binary=:all: --require-hashes "
        f'--cert /etc/ssl/certs/ca-certificates.crt -r {requirements} && rm {requirements}"'
    )


def ensure(cache_root: Path) -> Path:
    """The worker environment for the current recipe, provisioned on first use (about 1 min)."""
    return rootfs.ensure(
        cache_root / "worker-env" / recipe_hash(),
        lambda environment: rootfs.provision(
            environment,
            rootfs.read_packages([BUILD_PACKAGES, WORKER_PACKAGES]),
            [BUILD_PREFERENCES, WORKER_PREFERENCES],
            extra_hooks=(install_buildgrid_hook(),),
            what="the build environment + buildbox, PostgreSQL and BuildGrid; about 2 minutes",
        ),
    )
