"""The FUSE mount: our own session over ``/dev/fuse`` (session.py, protocol.py, devfuse.py,
passthrough.py), a thin adapter (ops.py) over warpdrive.fs, and its entry point (mount.py)."""
