"""The Debian lock tool's parts (lock.py runs them): archive (signed indexes from the mirror),
pins (apt preferences: which suite a package comes from), resolve (the dependency closure) and
write (the lock file)."""
