"""Error handlers, with webdataset's names and protocol (webdataset's own work too).

A handler gets the exception: it raises to stop the epoch with it, returns True to skip what
failed and go on, or False to end the worker's epoch quietly. A shard whose tar is damaged is
skipped from the damage on (its earlier samples were already delivered); a sample that fails to
decode is skipped alone. Each skip is counted in ``warpdrive_loader_skipped_total``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

Handler = Callable[[BaseException], bool]


def reraise_exception(exn: BaseException) -> bool:
    """The default: stop with the error."""
    raise exn


def warn_and_continue(exn: BaseException) -> bool:
    warnings.warn(f"warpdrive_torch: skipped: {exn}", stacklevel=2)
    return True


def ignore_and_continue(exn: BaseException) -> bool:
    return True


def warn_and_stop(exn: BaseException) -> bool:
    warnings.warn(f"warpdrive_torch: stopped: {exn}", stacklevel=2)
    return False
