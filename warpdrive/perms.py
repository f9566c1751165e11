"""Directories only their owner can open, whatever the process's umask.

The cache and the mount's log name every object read, so each directory WarpDrive makes for
them is 0700 (and each file in them 0600: ``os.open(path, flags, 0o600)``). A umask can only
take bits away from the mode asked for, so it never loosens these; but one such as 0o277 would
leave a directory its owner cannot write, so a directory made here is set to 0700 exactly.
Parents made on the way (``/nvme`` of ``/nvme/warpdrive-cache``) are asked for 0755: they may
come to hold other things, and must never be writable by others, who could otherwise swap the
private directory below them for one of their own (``os.makedirs`` makes them 0777 under a
umask of 000). An existing directory keeps its mode: a cache path may be a directory other
users share (a disk's own), and who may read it is then its owner's choice.
"""

from __future__ import annotations

import os

PRIVATE_DIR = 0o700
PARENT_DIR = 0o755


def private_dir(path: str) -> bool:
    """Make ``path`` 0700 if it is missing, and its missing parents 0755 (less what the umask
    takes away). True if this call made it; an existing directory is left as it is
    (FileExistsError if ``path`` is something else)."""
    if not _mkdir(path, PRIVATE_DIR):
        return False
    os.chmod(path, PRIVATE_DIR)
    return True


def _mkdir(path: str, mode: int) -> bool:
    try:
        os.mkdir(path, mode)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if parent == os.path.abspath(path):
            raise
        _mkdir(parent, PARENT_DIR)
        return _mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    return True
