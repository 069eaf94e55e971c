"""Bazel HTTP remote cache backed by S3 (the cache_server package next to this file).

A plain script, so that tools/bazel can start it before Bazel runs:
    python3 tools/cache/server.py --cache-dir DIR --bucket BUCKET [--endpoint-url URL] ...
"""

import os
import sys

if __name__ == "__main__":
    # The package sits next to this script, here and in Bazel's runfiles.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cache_server.main import main

    sys.exit(main())
