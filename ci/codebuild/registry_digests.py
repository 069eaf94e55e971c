"""What the registry holds for each image of a push-references.json, asked with crane: the
digest each tag resolves to, and whether the manifest is there by digest. Prints JSON
{image: {"tags": {tag: digest}, "by_digest": digest}} for ci/codebuild/check.py.

    tools/bazel run //ci/codebuild:registry_digests -- --references F --endpoint URL \\
        --username U --password P
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def crane_digest(reference: str, docker_config: Path) -> str:
    run = subprocess.run(
        ["crane", "digest", "--insecure", reference],
        env={**os.environ, "DOCKER_CONFIG": str(docker_config)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode != 0:
        return f"error: {run.stderr.strip()}"
    return run.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--references", type=Path, required=True)
    parser.add_argument(
        "--endpoint", required=True, help="http://HOST:PORT of the registry"
    )
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()

    address = args.endpoint.removeprefix("http://")
    images = json.loads(args.references.read_text())["images"]
    with tempfile.TemporaryDirectory() as docker_config:
        login = base64.b64encode(f"{args.username}:{args.password}".encode()).decode()
        (Path(docker_config) / "config.json").write_text(
            json.dumps({"auths": {address: {"auth": login}}})
        )
        found = {}
        for name, info in sorted(images.items()):
            local = f"{address}/{info['repository']}"
            found[name] = {
                "tags": {
                    tag: crane_digest(f"{local}:{tag}", Path(docker_config))
                    for tag in info["tags"]
                },
                "by_digest": crane_digest(
                    f"{local}@{info['digest']}", Path(docker_config)
                ),
            }
    json.dump(found, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
