"""The FUSE mount (pyfuse3): a thin adapter (ops.py) over warpdrive.fs, and its entry point."""
