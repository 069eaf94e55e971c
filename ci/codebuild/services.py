"""The stand-ins for AWS that ci/codebuild/check.py runs the buildspec against, until SIGTERM:
moto's server (S3 for the remote cache, ECR's API for the push's login and repository checks)
with the cache bucket and the template's ECR repositories made, and Debian's docker-registry
for ECR's registry API (moto does not serve it), accepting the password moto's
get_authorization_token hands out. Writes a JSON state file with their addresses and the CI
definitions read from the YAML files (definitions.py), so the check needs only the standard
library.

    tools/bazel run //ci/codebuild:services -- --state-file F --workdir D --bucket B \
        --definitions CLONE   # the work tree whose ci/codebuild/*.yml are read
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
from pathlib import Path

import bcrypt
import boto3
from moto.server import ThreadedMotoServer

from ci.codebuild import definitions
from tools.registry.local_registry import LocalRegistry

REGION = "us-east-1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="registry storage")
    parser.add_argument("--bucket", required=True)
    parser.add_argument(
        "--definitions", type=Path, required=True, help="work tree with ci/codebuild/"
    )
    args = parser.parse_args()

    buildspec = definitions.read_buildspec(
        args.definitions / "ci/codebuild/buildspec.yml"
    )
    template = definitions.read_template(
        args.definitions / "ci/codebuild/template.yaml"
    )

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
    session = boto3.session.Session(
        aws_access_key_id="moto", aws_secret_access_key="moto", region_name=REGION
    )
    session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=args.bucket)
    ecr = session.client("ecr", endpoint_url=endpoint)
    for repository in template["repositories"]:
        ecr.create_repository(repositoryName=repository)
    authorization = ecr.get_authorization_token()["authorizationData"][0]
    user, password = (
        base64.b64decode(authorization["authorizationToken"]).decode().split(":", 1)
    )
    ecr_registry = authorization["proxyEndpoint"].removeprefix("https://")

    args.workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = args.workdir / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{user}:{hashed}\n")
    registry = LocalRegistry(
        args.workdir / "registry",
        auth={"htpasswd": {"realm": "ecr", "path": str(htpasswd)}},
    )
    registry.start()
    try:
        state = {
            "moto_endpoint": endpoint,
            "region": REGION,
            "bucket": args.bucket,
            "ecr_registry": ecr_registry,
            "registry_endpoint": registry.url,
            "registry_user": user,
            "registry_password": password,
            "buildspec": buildspec,
            "template": template,
        }
        temporary = args.state_file.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(args.state_file)
        print(f"moto at {endpoint}, registry at {registry.url}", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        registry.stop()
        moto.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
