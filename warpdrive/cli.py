"""Console entry points. ``warpdrive-ctl`` (issue #4) is not built yet and says so."""

from __future__ import annotations

import sys


def mount_main() -> int:
    from warpdrive.fuse.mount import main

    return main()


def ctl_main() -> int:
    print("warpdrive-ctl: not available in this release yet (tracked in issue #4)", file=sys.stderr)
    return 2
