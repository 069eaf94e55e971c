"""Invokes a handler image locally through the Lambda Runtime API; `--help` lists the options.

    tools/bazel run //handlers/list_pending_batches:invoke -- --event event.json --env-file dev.env
    tools/bazel run //handlers/list_pending_batches:invoke -- --serve 9000

Prints the response (exit 0) or Lambda's error object (exit 1) on stdout; the function's own
output and Lambda's START/END/REPORT lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tools.devmode import sandbox
from tools.devmode.emulator import Emulator
from tools.devmode.function import Function, Settings
from tools.devmode.image import Image, ImageError
from tools.devmode.sandbox import SandboxError
from tools.devmode.unpack import RootCache, default_cache_directory

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


def user_path(text: str) -> Path:
    """A path as the user typed it: `bazel run` starts us in the runfiles, not in their directory."""
    return Path(os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())) / text


def parse_env_line(text: str, origin: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    name = name.strip()
    if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
        raise UsageError(f"{origin}: {text!r} is not NAME=VALUE")
    if not equals:
        if name not in os.environ:
            raise UsageError(
                f"{origin}: {name} has no value and is not set here; write {name}=VALUE"
            )
        value = os.environ[
            name
        ]  # `--env NAME` passes this one host variable on purpose
    return name, value


def read_env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise UsageError(f"--env-file {path}: {error.strerror}") from None
    env = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            name, value = parse_env_line(
                line.removeprefix("export "), f"{path}:{number}"
            )
            env[name] = value
    return env


def read_event(source: str) -> bytes:
    if source == "-":
        data = sys.stdin.buffer.read()
        origin = "the event on stdin"
    else:
        path = user_path(source)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise UsageError(f"--event {path}: {error.strerror}") from None
        origin = str(path)
    try:
        json.loads(data)
    except ValueError as error:
        raise UsageError(
            f"{origin} is not JSON ({error}); Lambda events are JSON documents"
        ) from None
    return data


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(
        prog="invoke",
        description="Run a handler image as Lambda does: its ENTRYPOINT + CMD under a Lambda "
        "Runtime API, read-only root, writable /tmp, nonroot user, only the environment given.",
    )
    arguments.add_argument(
        "--image",
        required=True,
        type=Path,
        help="manifest.json, or its directory, with config.json and layout/ beside it (the :invoke target sets it)",
    )
    arguments.add_argument(
        "--function-name",
        default="function",
        help="AWS_LAMBDA_FUNCTION_NAME and the ARN's name",
    )
    arguments.add_argument(
        "--event",
        default=None,
        help="JSON file with the event, or - for stdin (default: {})",
    )
    arguments.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for the function (repeatable); NAME alone passes this machine's value",
    )
    arguments.add_argument(
        "--env-file",
        action="append",
        default=[],
        type=Path,
        help="NAME=VALUE lines, # comments (what `bazel run //:dev` writes)",
    )
    arguments.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds an invocation may run (default 30)",
    )
    arguments.add_argument(
        "--init-timeout",
        type=float,
        default=120.0,
        help="seconds the cold start may take (default 120; qemu is slow)",
    )
    arguments.add_argument(
        "--memory",
        type=int,
        default=1024,
        help="MB reported to the function and in REPORT (default 1024; not enforced)",
    )
    arguments.add_argument(
        "--handler", help="override the image's CMD, e.g. handler.handler"
    )
    arguments.add_argument(
        "--serve",
        nargs="?",
        type=int,
        const=9000,
        metavar="PORT",
        help="stay up and accept invocations on POST 127.0.0.1:PORT/2015-03-31/functions/function/invocations (default port 9000; 0 picks one)",
    )
    arguments.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"unpacked roots (default {default_cache_directory()})",
    )
    return arguments


def check_limits(options: argparse.Namespace) -> None:
    if options.timeout <= 0 or options.init_timeout <= 0:
        raise UsageError("--timeout and --init-timeout must be positive seconds")
    if not 128 <= options.memory <= 10240:
        raise UsageError(
            f"--memory must be 128 to 10240 MB, as in Lambda; got {options.memory}"
        )


def environment(options: argparse.Namespace) -> dict[str, str]:
    """The function's variables: --env-file files in order, then --env (later ones win)."""
    env: dict[str, str] = {}
    for path in options.env_file:
        env.update(read_env_file(user_path(str(path))))
    for text in options.env:
        name, value = parse_env_line(text, "--env")
        env[name] = value
    return env


def describe_error(payload: bytes) -> str:
    try:
        error = json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")
    if not isinstance(error, dict):
        return str(error)
    lines = [f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"]
    lines += [str(frame).rstrip() for frame in error.get("stackTrace") or []]
    if error.get("lastOutput"):
        lines += ["last output of the function:"] + [
            f"  {line}" for line in error["lastOutput"]
        ]
    return "\n".join(lines)


def _exit_on_sigterm(number: int, _frame) -> None:
    sys.exit(128 + number)  # unwinds through the `finally` that stops the function


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    options = parser().parse_args(argv)
    try:
        image_path = options.image.absolute()
        if image_path.name == "manifest.json":
            image_path = image_path.parent
        image = Image.from_directory(image_path)
        # Every mistake in the arguments is reported before the (possibly long) unpack.
        check_limits(options)
        env = environment(options)
        event = read_event(options.event) if options.event else b"{}"
        sandbox.qemu_for(image.architecture)
        cache = RootCache(options.cache_dir or default_cache_directory())
        started = time.monotonic()
        try:
            root = cache.root_for(image)
        except OSError as error:
            # The staging directory is gone again: no half-unpacked root is left behind.
            raise UsageError(
                f"cannot unpack the image into {cache.directory}: {error.strerror};"
                " free some space or pass --cache-dir on a larger disk"
            ) from None
        if cache.layers_applied:
            print(
                f"devmode: unpacked {cache.layers_applied} layer(s) into {root} in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
    except (UsageError, ImageError, SandboxError) as error:
        print(f"invoke: {error}", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(
        image=image,
        root=root,
        function_name=options.function_name,
        env=env,
        timeout=options.timeout,
        memory_mb=options.memory,
        init_timeout=options.init_timeout,
        handler=options.handler,
    )
    with tempfile.TemporaryDirectory(prefix="devmode-") as scratch:
        function = Function(settings, Path(scratch), log=sys.stderr)
        try:
            if options.serve is not None:
                try:
                    emulator = Emulator(function, options.serve)
                except OSError as error:
                    print(
                        f"invoke: cannot listen on 127.0.0.1:{options.serve}: {error.strerror};"
                        " pass another port to --serve (0 picks a free one)",
                        file=sys.stderr,
                    )
                    return EXIT_USAGE
                print(f"devmode: serving {emulator.url}", flush=True)
                emulator.serve_forever()
                return 0
            outcome = function.invoke(event)
        except SandboxError as error:
            print(f"invoke: {error}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return 130
        finally:
            function.close()
    sys.stdout.buffer.write(outcome.payload + b"\n")
    sys.stdout.flush()
    if not outcome.ok:
        print(describe_error(outcome.payload), file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
