"""A handler module that cannot be imported: Lambda reports an init error, not a hang."""

import not_a_module_of_the_image  # noqa: F401


def handler(event, context):
    return "unreachable"
