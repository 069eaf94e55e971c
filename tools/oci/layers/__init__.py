"""The layer tool's parts: entries.py (what goes in), wheels.py (wheel members), bytecode.py (.pyc),
tarball.py (writing)."""
