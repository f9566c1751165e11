"""Console entry points. The mount (issue #3) and the ctl tool (issue #4) are not built yet;
their commands say so instead of pretending to work."""

from __future__ import annotations

import sys


def _not_yet(tool: str, issue: int) -> int:
    print(
        f"{tool}: not available in this release yet (tracked in issue #{issue}); "
        "the in-process reader is: warpdrive.WarpDrive",
        file=sys.stderr,
    )
    return 2


def mount_main() -> int:
    return _not_yet("warpdrive-mount", 3)


def ctl_main() -> int:
    return _not_yet("warpdrive-ctl", 4)
