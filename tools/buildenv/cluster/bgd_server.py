"""Runs `bgd server start CONFIG` and writes the port the server bound to PORT_FILE.

The cluster's configuration binds 127.0.0.1:0 on first start, so the operating system picks a free
port; `bgd server start` does not say which one, but BuildGrid's Server reports it through
`port_assigned_callback`. Run with the BuildGrid venv's python: bgd_server.py CONFIG PORT_FILE.
"""

import signal
import sys
from pathlib import Path

from buildgrid.server.app.cli import setup_logging
from buildgrid.server.app.commands.cmd_server import _create_server_from_config
from buildgrid.server.app.settings.parser import load_config
from buildgrid.server.exceptions import ShutdownSignal


def write_port(port_file: Path, port_map: dict[str, int]) -> None:
    (port,) = set(port_map.values())
    temporary = port_file.with_suffix(".tmp")
    temporary.write_text(str(port))
    temporary.replace(port_file)


def main(config: str, port_file: str) -> None:
    setup_logging(verbosity=0)
    server = _create_server_from_config(load_config(config))

    def stop(signum, _frame):
        raise ShutdownSignal(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.start(
            port_assigned_callback=lambda port_map: write_port(
                Path(port_file), port_map
            )
        )
    except ShutdownSignal:
        pass
    finally:
        server.stop()
        Path(port_file).unlink(missing_ok=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
