"""The one exception the lock tool reports to its user."""


class LockError(Exception):
    """A problem the user must fix; the message says how."""
