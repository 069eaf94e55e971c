"""Starts the S3 remote cache server (server.py) in the background unless it is running already.

For tools/bazel: `load_config()` reads the bucket settings from the environment or the user's
config file (None: no bucket, use --disk_cache), `ensure_server(config)` returns the URL of a
healthy server on a loopback port, starting one if needed, and `bazelrc_lines(url)` are the
lines that point Bazel at it. Only the standard library is used; the server itself needs a
Python with boto3 and protobuf (see BAZEL_CACHE_SERVER_COMMAND).

    ensure_server.py           print the server URL (nothing when no bucket is configured)
    ensure_server.py --stop    stop the server this tool started for the current configuration

Settings (environment variables, or KEY=VALUE lines in $BAZEL_CACHE_CONFIG, by default
${XDG_CONFIG_HOME:-~/.config}/bazel-s3-cache/config; the environment wins):
    BAZEL_CACHE_S3_BUCKET        bucket name; caching through S3 is on when it is set
    BAZEL_CACHE_S3_PREFIX        key prefix in the bucket (default bazel-cache)
    BAZEL_CACHE_S3_REGION        AWS region (default: the AWS configuration's)
    BAZEL_CACHE_S3_ENDPOINT_URL  S3 endpoint for S3-compatible stores (default: AWS)
    BAZEL_CACHE_DISK_LIMIT       size of the local disk tier (default 10G)
    BAZEL_CACHE_DIR              server state and disk tier
                                 (default ${XDG_CACHE_HOME:-~/.cache}/bazel-s3-cache)
    BAZEL_CACHE_SERVER_COMMAND   command that runs server.py, given the server's flags after
                                 it (default: this Python and server.py; for instance
                                 `tools/bazel run //tools/cache:server --`)
Credentials come from the standard AWS chain (environment, ~/.aws, instance role); they are
never written anywhere by the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

SERVER_SCRIPT = Path(__file__).resolve().parent / "server.py"
SETTINGS = {
    "BAZEL_CACHE_S3_BUCKET": "bucket",
    "BAZEL_CACHE_S3_PREFIX": "prefix",
    "BAZEL_CACHE_S3_REGION": "region",
    "BAZEL_CACHE_S3_ENDPOINT_URL": "endpoint_url",
    "BAZEL_CACHE_DISK_LIMIT": "disk_limit",
    "BAZEL_CACHE_DIR": "state_dir",
    "BAZEL_CACHE_SERVER_COMMAND": "server_command",
}


class CacheServerError(Exception):
    """The cache server is misconfigured or would not start; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    bucket: str
    state_dir: Path
    prefix: str = "bazel-cache"
    region: str = ""
    endpoint_url: str = ""
    disk_limit: str = "10G"
    server_command: tuple[str, ...] = (sys.executable, str(SERVER_SCRIPT))

    def server_dir(self) -> Path:
        """One server (and disk tier) per bucket location, so switching buckets stops nothing."""
        where = json.dumps([self.bucket, self.prefix, self.region, self.endpoint_url])
        return self.state_dir / hashlib.sha256(where.encode()).hexdigest()[:16]


def load_config(env: dict[str, str] | None = None) -> CacheConfig | None:
    """The configured S3 cache, or None when no bucket is configured."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    config_file = Path(
        env.get("BAZEL_CACHE_CONFIG")
        or os.path.join(config_home, "bazel-s3-cache", "config")
    )
    values = _read_config_file(config_file) if config_file.is_file() else {}
    values.update({name: env[name] for name in SETTINGS if env.get(name)})
    if not values.get("BAZEL_CACHE_S3_BUCKET"):
        return None
    cache_home = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    fields = {SETTINGS[name]: value for name, value in values.items()}
    fields["state_dir"] = Path(
        fields.get("state_dir") or os.path.join(cache_home, "bazel-s3-cache")
    ).expanduser()
    if "server_command" in fields:
        fields["server_command"] = tuple(shlex.split(fields["server_command"]))
    return CacheConfig(**fields)


def _read_config_file(path: Path) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not equals or name not in SETTINGS:
            raise CacheServerError(
                f"{path}:{number}: expected NAME=VALUE with NAME one of {', '.join(SETTINGS)}"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def bazelrc_lines(url: str) -> list[str]:
    """Lines for the launcher's rc file that send builds through the cache server at `url`."""
    return ["build --config=s3cache", f"build --remote_cache={url}"]


def ensure_server(config: CacheConfig, timeout: float = 30.0) -> str:
    """The URL of a healthy server for `config`, started in the background if none is running."""
    directory = config.server_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "ensure.lock", "w") as lock:
        # Concurrent launchers: the first starts the server, the others wait and reuse it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        url = running_server_url(config)
        return url or _start(config, directory, timeout)


def running_server_url(config: CacheConfig) -> str | None:
    """The URL of the server this tool started for `config`, if it is alive and answering."""
    record = _read_record(config.server_dir())
    if record is None:
        return None
    status = _fetch_status(record["url"])
    if status is None or status.get("instance_id") != record["instance_id"]:
        return None
    return record["url"]


def stop_server(config: CacheConfig, timeout: float = 30.0) -> bool:
    """Stops the server that ensure_server started for `config` (and nothing else)."""
    if running_server_url(config) is None:
        return False
    pid = _read_record(config.server_dir())["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _process_alive(pid):
        if time.monotonic() > deadline:
            raise CacheServerError(
                f"cache server {pid} did not stop within {timeout:.0f}s"
            )
        time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        (config.server_dir() / "server.json").unlink()
    return True


def _start(config: CacheConfig, directory: Path, timeout: float) -> str:
    port_file = directory / "port"
    with contextlib.suppress(FileNotFoundError):
        port_file.unlink()
    log_path = directory / "server.log"  # rotated by the server itself
    # What the process prints before its log is set up (a crash at start, say); rewritten at
    # each start, so it stays small.
    output_path = directory / "server.out"
    instance_id = uuid.uuid4().hex
    command = [
        *config.server_command,
        f"--instance-id={instance_id}",
        f"--cache-dir={directory}",
        f"--bucket={config.bucket}",
        f"--prefix={config.prefix}",
        f"--region={config.region}",
        f"--endpoint-url={config.endpoint_url}",
        f"--disk-limit={config.disk_limit}",
        "--host=127.0.0.1",
        "--port=0",
        f"--port-file={port_file}",
        f"--log-file={log_path}",
    ]
    # The flags above say everything; without the settings in its environment, a server command
    # that goes through tools/bazel does not try to start a cache server of its own.
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    with open(output_path, "wb") as output:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives the launcher; Ctrl-C in the build spares it
            )
        except OSError as error:
            raise CacheServerError(
                f"cannot run {command[0]!r} for the cache server: {error}; set "
                "BAZEL_CACHE_SERVER_COMMAND to a command that runs server.py with boto3 "
                "and protobuf"
            ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # Its log last: the last line of the message is where a crash says what went wrong
            # (tools/bazel shows it), and a server that died before logging has none.
            logged = (
                f"\nand of {log_path}:\n{_tail(log_path)}" if log_path.exists() else ""
            )
            raise CacheServerError(
                f"the cache server exited with status {process.returncode}; "
                f"the end of {output_path}:\n{_tail(output_path)}{logged}"
            )
        if port_file.exists():
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            status = _fetch_status(url)
            if status and status.get("instance_id") == instance_id:
                # The server's own pid: a wrapper command may have started it as a child.
                record = {"pid": status["pid"], "url": url, "instance_id": instance_id}
                _write_record(directory, record)
                return url
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise CacheServerError(
        f"the cache server did not answer within {timeout:.0f}s; see {log_path}:\n"
        f"{_tail(log_path)}\nand {output_path}:\n{_tail(output_path)}"
    )


def _fetch_status(url: str) -> dict | None:
    # Imported here: tools/bazel loads this module on every command to read the configuration,
    # and urllib.request costs it 15 ms.
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/status", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _read_record(directory: Path) -> dict | None:
    try:
        record = json.loads((directory / "server.json").read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or not {"pid", "url", "instance_id"} <= record.keys()
    ):
        return None
    return record


def _write_record(directory: Path, record: dict) -> None:
    temporary = directory / f"server.json.{os.getpid()}"
    temporary.write_text(json.dumps(record) + "\n")
    temporary.replace(directory / "server.json")


def _process_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stop", action="store_true", help="stop the server started for this config"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config()
        if config is None:
            return 0
        if args.stop:
            stopped = stop_server(config)
            print(
                "stopped" if stopped else "no server of ours was running",
                file=sys.stderr,
            )
            return 0
        print(ensure_server(config))
    except CacheServerError as error:
        print(f"ensure_server: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
