"""What both command lines share: ``--version`` and ``--print-completion SHELL``.

Completion scripts are generated from the argparse parser itself by shtab, so every subcommand
and option a tool has is completed, with nothing to keep in step by hand. ``complete`` marks an
argument that takes a file name, for the shell to complete from the disk.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import shtab

from warpdrive import __version__

FILE = shtab.FILE  # for complete(): a file name, completed from the disk


def add_version_and_completion(parser: argparse.ArgumentParser) -> None:
    """``--version`` (``PROG VERSION``) and ``--print-completion {bash,zsh,tcsh,…}``."""
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )
    shtab.add_argument_to(
        parser, "--print-completion", help="print a completion script for this shell and exit"
    )


def complete(action: argparse.Action, what: Mapping[str, object]) -> argparse.Action:
    """Have the shell complete ``action``'s value from the disk (``FILE``)."""
    action.complete = what  # type: ignore[attr-defined]  # shtab reads this attribute
    return action
