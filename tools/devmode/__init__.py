"""Dev mode: run a handler image on this machine the way Lambda runs it, without Docker or AWS.

image.py reads a built image, unpack.py turns its layers into a cached root file system,
sandbox.py enters that root read-only, runtime_api.py serves the Lambda Runtime API,
function.py runs one function instance, invoke.py is the command line and emulator.py the
`--serve` endpoint; stack.py is the local AWS + OpenAI stack behind `bazel run //:dev`.
"""
