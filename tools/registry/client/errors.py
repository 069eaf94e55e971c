"""Errors with messages meant for the person running the tool."""

from __future__ import annotations


class RegistryError(Exception):
    """A failure with a message meant for the person running the tool."""

    def __init__(self, message: str, codes: frozenset[str] = frozenset()):
        super().__init__(message)
        self.codes = codes  # the registry's error codes, e.g. NAME_UNKNOWN


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class DigestMismatchError(RegistryError):
    pass
