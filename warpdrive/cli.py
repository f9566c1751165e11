"""Console entry points, imported lazily so ``--help`` stays fast."""

from __future__ import annotations


def mount_main() -> int:
    from warpdrive.fuse.mount import main

    return main()


def ctl_main() -> int:
    from warpdrive.ctl.main import main

    return main()
