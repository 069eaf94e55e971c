"""A first-party package placed by py_layer relative to its py_library `imports` root."""

import jmespath


def handle(event, context):
    return jmespath.search("greeting", event)
