"""Errors that the handlers turn into clear results instead of stack traces."""


class InvalidInput(ValueError):
    """The event or a file it names is malformed; nothing was changed. The message says how to fix it."""


class ConfigError(RuntimeError):
    """The function's environment lacks a setting or has a bad one."""
