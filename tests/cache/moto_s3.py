"""moto's S3 in server mode on a loopback port, with buckets made; runs until SIGTERM/SIGINT.

For the remote cache end-to-end check and benchmark, which start it with
`tools/bazel run //tests/cache:moto_s3 -- --port-file FILE --bucket NAME`.
"""

import argparse
import os
import signal
import sys

import boto3
from moto.server import ThreadedMotoServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", required=True, help="written once S3 answers")
    parser.add_argument(
        "--bucket", action="append", default=[], help="bucket to create"
    )
    args = parser.parse_args()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="moto",
        aws_secret_access_key="moto",
    )
    for bucket in args.bucket:
        client.create_bucket(Bucket=bucket)
    temporary = f"{args.port_file}.{os.getpid()}"
    with open(temporary, "w") as port_file:
        port_file.write(f"{port}\n")
    os.replace(temporary, args.port_file)
    print(f"moto S3 on http://127.0.0.1:{port}, buckets: {args.bucket}", flush=True)

    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
