"""How the image tools' actions run."""

# The layer, image and layout tools serve their actions as Bazel persistent workers
# (tools/oci/worker.py): an action then costs milliseconds instead of two interpreter start-ups.
WORKER_EXECUTION_REQUIREMENTS = {
    "requires-worker-protocol": "json",
    "supports-workers": "1",
}

