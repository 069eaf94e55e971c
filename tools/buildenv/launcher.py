"""Runs Bazel inside the project's pinned build environment; `tools/bazel` calls main().

The build environment is a Debian trixie root file system with Bazel 7.7.1 and its modules from
Debian forky plus the tools in packages.txt. It lives under
`${XDG_CACHE_HOME:-~/.cache}/receipt-lambdas/buildenv/<recipe hash>/`, so a changed recipe gets
a new directory and never touches one that another checkout still uses. It is built in a
temporary directory and renamed into place when complete, under a lock, so an interrupted
provisioning is never used.

Bazel then runs through chroot in a private mount namespace where /proc, /dev, /sys, /tmp, the
home directory and the work tree appear at their usual absolute paths; the network is the host's.
Only the Python standard library is used: this runs on the host's python3 before anything else
exists. Every Bazel command that is not on tools/bazel's fast path pays for this module's imports,
so modules only some commands need (argparse, dataclasses, urllib) are imported where used.
"""

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import fast_path
import rootfs
import worker_env
from cluster import host as cluster
from rootfs import LauncherError, progress

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent
RECIPE_FILES = [HERE / "packages.txt", HERE / "apt-preferences"]
# Bump when the provisioning steps below change in a way that needs a new environment.
RECIPE_REVISION = "1"

# Set to a Bazel >= 7.1 binary to skip the build environment (needs the Bazel Central Registry).
HOST_BAZEL_VARIABLE = "BUILDENV_HOST_BAZEL"
# Host variables that would point the build environment at host-only files.
DROPPED_VARIABLES = (
    "PATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
)
# Set for tools/bazel commands that must not use the S3 remote cache (the one that starts it).
NO_REMOTE_CACHE_VARIABLE = "BUILDENV_NO_REMOTE_CACHE"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Commands whose build metrics tools/metrics records (see metrics_recording).
RECORDED_COMMANDS = {"build", "test", "run", "coverage"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base, "receipt-lambdas")


def recipe_hash() -> str:
    return rootfs.recipe_hash(RECIPE_FILES, RECIPE_REVISION)


def recipe_packages() -> list[str]:
    return rootfs.read_packages([HERE / "packages.txt"])


def namespace_command() -> list[str]:
    """unshare arguments for a private mount namespace, with a user namespace when not root."""
    if shutil.which("unshare") is None:
        raise LauncherError("the `unshare` command is missing; install util-linux")
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        raise LauncherError(
            "not root and unprivileged user namespaces are unavailable "
            "(enable them with `sysctl kernel.unprivileged_userns_clone=1`, or run as root)"
        )
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--propagation",
        "private",
    ]


def output_base(output_user_root: Path, startup_args: list[str]) -> Path:
    """Bazel's output base: --output_base if given, else the md5 of the workspace path."""
    for index, arg in enumerate(startup_args):
        if arg.startswith("--output_base="):
            return Path(arg.split("=", 1)[1])
        if arg == "--output_base" and index + 1 < len(startup_args):
            return Path(startup_args[index + 1])
        if not arg.startswith("-"):
            break  # the command: startup options end here
    return output_user_root / hashlib.md5(str(WORKSPACE).encode()).hexdigest()


def running_server(base: Path, root: Path) -> int | None:
    """The pid of this workspace's Bazel server if it runs in `root`.

    A client must run in the server's mount namespace: it checks the server's working directory
    through /proc, and from another namespace that path does not match the workspace, so Bazel
    would restart its server (and lose its analysis cache) on every command.
    """
    try:
        pid = int((base / "server" / "server.pid.txt").read_text())
        return pid if os.readlink(f"/proc/{pid}/root") == str(root) else None
    except (OSError, ValueError):
        return None


def enter_command(pid: int) -> list[str]:
    """nsenter arguments that join the mount (and user) namespace and the root of process `pid`."""
    if shutil.which("nsenter") is None:
        raise LauncherError("the `nsenter` command is missing; install util-linux")
    # --root and --wd without a value: the target's, opened in its namespace (where /proc is
    # mounted); a directory given here would be opened in ours.
    return ["nsenter", f"--target={pid}", *namespace_flags(), "--root", "--wd"]


def namespace_flags() -> list[str]:
    if os.geteuid() == 0:
        return ["--mount"]
    return ["--user", "--mount", "--preserve-credentials"]


def write_fast_path(root: Path, base: Path, startup: list[str]) -> None:
    """Leaves tools/bazel what it needs to run Bazel without this launcher next time."""
    fast_path.write(
        fast_path.location(cache_root(), WORKSPACE),
        workspace=WORKSPACE,
        root=root,
        base=base,
        startup=startup,
        namespace=namespace_flags(),
        path=CHROOT_PATH,
    )


def ensure_environment() -> Path:
    """The path of the provisioned environment for the current recipe, provisioning it if needed."""
    return rootfs.ensure(
        cache_root() / "buildenv" / recipe_hash(),
        lambda environment: rootfs.provision(
            environment, recipe_packages(), [HERE / "apt-preferences"]
        ),
    )


def remote_cache_lines() -> list[str]:
    """rc lines for the S3 remote cache when a bucket is configured (tools/cache), else []."""
    if os.environ.get(NO_REMOTE_CACHE_VARIABLE):
        return []
    sys.path.insert(0, str(WORKSPACE / "tools" / "cache"))
    import ensure_server

    config = ensure_server.load_config()
    if config is None:
        return []
    if "BAZEL_CACHE_SERVER_COMMAND" not in os.environ:
        # The server needs boto3 and protobuf, so Bazel builds it from the locked wheels; that
        # inner tools/bazel must not look for a cache server itself (it would wait for this one).
        os.environ[NO_REMOTE_CACHE_VARIABLE] = "1"
        os.environ["BUILD_METRICS"] = (
            "0"  # the server's `bazel run` is not a build to record
        )
        command = (
            str(WORKSPACE / "tools" / "bazel"),
            "run",
            "//tools/cache:server",
            "--",
        )
        import dataclasses

        config = dataclasses.replace(config, server_command=command)
    try:
        url = ensure_server.ensure_server(config, timeout=600)
    except ensure_server.CacheServerError as error:
        # A cache must never fail a build: say why in one line and build without it.
        progress(
            f"remote cache disabled: {one_line(error)}; building without it (fix the cause, "
            f"or unset BAZEL_CACHE_S3_BUCKET to stop using the cache)"
        )
        return []
    return ensure_server.bazelrc_lines(url)


def one_line(error: Exception) -> str:
    """An error whose message ends with a log excerpt, as one line: its first line and the
    excerpt's last, which is where a server's traceback names what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(error).__name__
    return f"{lines[0].rstrip(':')} (last: {lines[-1]})"


def bazel_rc(cache: Path, remote_cache: list[str]) -> Path:
    """The launcher's rc file: caches that persist across runs and build environments."""
    lines = [f"common --repository_cache={cache / 'repository-cache'}"]
    lines += remote_cache or [f"build --disk_cache={cache / 'disk-cache'}"]
    rc = cache / ("launcher-remote.bazelrc" if remote_cache else "launcher.bazelrc")
    text = "\n".join(lines) + "\n"
    if not rc.exists() or rc.read_text() != text:
        rc.parent.mkdir(parents=True, exist_ok=True)
        temporary = rc.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(rc)
    return rc


def chroot_script(root: Path, binds: list[Path], workdir: Path) -> str:
    """Shell commands for a new mount namespace: bind mounts, then chroot into Bazel."""
    quoted_root = shlex.quote(str(root))
    lines = ["set -e"]
    for source in ("/proc", "/dev", "/sys"):
        lines.append(f"mount --rbind {source} {quoted_root}{source}")
    for path in binds:
        target = shlex.quote(str(root) + str(path))
        lines.append(
            f"mkdir -p {target} && mount --rbind {shlex.quote(str(path))} {target}"
        )
    for path in ("/etc/resolv.conf", "/etc/hosts"):
        if os.path.exists(path):
            target = shlex.quote(str(root) + path)
            lines.append(f"touch {target} && mount --bind {path} {target}")
    lines.append(chroot_command(root, workdir))
    return "\n".join(lines)


# sh -c script: $0 is the working directory, "$@" Bazel's arguments.
ENTER_WORKDIR = 'cd "$0" && exec bazel "$@"'


def chroot_command(root: Path, workdir: Path) -> str:
    return f'exec chroot {shlex.quote(str(root))} sh -c {shlex.quote(ENTER_WORKDIR)} {shlex.quote(str(workdir))} "$@"'


def installed_bazel_version(environment: Path) -> str:
    """The upstream version of the bazel-bootstrap package in the environment's manifest."""
    for line in (environment / "manifest.tsv").read_text().splitlines():
        package, version, *_ = line.split("\t")
        if package == "bazel-bootstrap":
            return version.split("+")[0].split("-")[0]
    return "none"


def check_bazel_version(environment: Path) -> None:
    wanted = (WORKSPACE / ".bazelversion").read_text().strip()
    installed = installed_bazel_version(environment)
    if installed != wanted:
        raise LauncherError(
            f".bazelversion asks for Bazel {wanted} but the build environment has {installed}; "
            "pin the matching bazel-bootstrap in tools/buildenv/packages.txt"
        )


def print_info(environment: Path) -> None:
    print(f"build environment: {environment}")
    print(f"bazel: {installed_bazel_version(environment)}")
    print(
        f"recipe: {', '.join(str(p.relative_to(WORKSPACE)) for p in RECIPE_FILES)} (hash {recipe_hash()})"
    )
    print(f"Debian packages ({environment / 'manifest.tsv'}):")
    print((environment / "manifest.tsv").read_text(), end="")


def metrics_recording(argv: list[str]):
    """tools/metrics/record.py's Recording for build, test, run and coverage, else None; only
    those commands pay for importing it."""
    if not RECORDED_COMMANDS.intersection(argv):
        return None
    sys.path.insert(0, str(WORKSPACE))
    from tools.metrics import record

    return record.Recording.start(argv, WORKSPACE)


def remote_command(argv: list[str]) -> int:
    """`tools/bazel remote up [--workers N] [--config FILE] | down | status`: the local cluster."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="tools/bazel remote",
        description="A local remote-execution cluster (BuildGrid + buildbox workers) for --config=remote.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "up", help="start PostgreSQL, BuildGrid and the workers"
    )
    start.add_argument(
        "--workers", type=int, default=2, help="buildbox workers (default 2)"
    )
    start.add_argument(
        "--config",
        type=Path,
        help="a BuildGrid configuration to use instead of tools/buildenv/cluster/buildgrid.yml "
        "(${address} and ${sql} are filled in)",
    )
    commands.add_parser("down", help="stop the cluster")
    commands.add_parser("status", help="workers, queue and where the logs are")
    args = parser.parse_args(argv)
    if args.command == "up":
        worker_root = worker_env.ensure(cache_root()) / "root"
        cluster.up(cache_root(), worker_root, recipe_hash(), args.workers, args.config)
    elif args.command == "down":
        cluster.down(cache_root())
    else:
        return cluster.status(cache_root())
    return 0


def main(argv: list[str]) -> int:
    host_bazel = os.environ.get(HOST_BAZEL_VARIABLE)
    if host_bazel:
        os.execv(host_bazel, [host_bazel, *argv])
    try:
        if argv[:1] == ["remote"]:
            return remote_command(argv[1:])
        environment = ensure_environment()
        if argv[:1] == ["--buildenv-info"]:
            print_info(environment)
            return 0
        check_bazel_version(environment)
        cache = cache_root()
        home = Path(os.path.expanduser("~"))
        workdir = Path.cwd()
        root = environment / "root"
        output_user_root = cache / "bazel" / environment.name
        recording = metrics_recording(argv)
        if recording:
            argv = recording.bazel_args
        remote_execution = cluster.bazelrc_lines(cache, argv, recipe_hash())
        # Remote execution brings its own cache; Bazel takes one remote endpoint.
        remote = remote_execution or remote_cache_lines()
        rc = bazel_rc(cache, remote)
        startup = [f"--output_user_root={output_user_root}", f"--bazelrc={rc}"]
        user_rc = home / ".bazelrc"
        if user_rc.exists():
            startup.append(f"--bazelrc={user_rc}")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in DROPPED_VARIABLES and not k.startswith("PYENV")
        }
        env["PATH"] = CHROOT_PATH
        base = output_base(output_user_root, argv)
        server = running_server(base, root)
        if not remote and argv[:1] and not argv[0].startswith("-"):
            write_fast_path(root, base, startup)
        if server:
            command = [*enter_command(server), "sh", "-c", ENTER_WORKDIR, str(workdir)]
            command += [*startup, *argv]
        else:
            binds = sorted({Path("/tmp"), home, WORKSPACE, cache})
            script = chroot_script(root, binds, workdir)
            command = [*namespace_command(), "sh", "-c", script, "tools/bazel"]
            command += [*startup, *argv]
        if recording:
            import child  # only recorded commands outlive Bazel

            status = child.run_as_if_executed(command, {**env, **recording.env})
            recording.finish()
            return status
        os.execvpe(command[0], command, env)
    except LauncherError as error:
        print(f"tools/bazel: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
