"""genv lock: run a command holding an exclusive lock on each GPU of the
environment, so that environments sharing a GPU can take turns."""

from __future__ import annotations

import os

from .. import options
from ..core import supervise, turns
from ..core.context import Context
from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


def complete(words: List[str]) -> List[str]:
    return [] if "--" in words else ["--"]


def split(argv: List[str]) -> List[str]:
    """The command after ``--``; genv's own options (none yet) before it."""
    if "--" not in argv:
        raise UsageError("put the command after --: genv lock -- COMMAND [ARGS...]")
    at = argv.index("--")
    options.parse(argv[:at], {}, 0)
    command = argv[at + 1:]
    if not command:
        raise UsageError("no command given after --")
    return command


def main(argv: List[str]) -> int:
    command = split(argv)
    ctx = Context()
    eid = ctx.require_active()
    program = supervise.resolve(command, os.environ.get("PATH", ""))
    held = turns.hold(ctx, eid)
    try:
        # The command inherits the locks: they last as long as it runs,
        # even if genv lock itself is killed.
        status = supervise.Child(program, command, keep_fds=held).supervise()
    finally:
        turns.release(held)
    return supervise.ended(status)
