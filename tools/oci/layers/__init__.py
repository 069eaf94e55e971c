"""The layer tool's parts: entries.py (what goes in), bytecode.py (.pyc), tarball.py (writing)."""
