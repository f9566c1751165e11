"""``forge`` / ``python -m forge``: not built yet (issue #6)."""

from __future__ import annotations

import sys


def main() -> int:
    print("forge: not available in this release yet (tracked in issue #6)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
