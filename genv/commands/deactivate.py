"""genv deactivate: leave the environment and restore the shell exactly."""

from __future__ import annotations

import os

from .. import options
from ..core import operations
from ..core.context import Context
from ..report import warn
from ..shell import Script, emit

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    options.parse(argv, {}, 0)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("deactivate")
    outcome = operations.deactivate(ctx, eid, os.environ)
    # The shell is restored even when the state could not be updated.
    emit(Script().plan(outcome.plan).encode())
    if outcome.failure is not None:
        warn("left environment %s in this shell, but: %s" % (eid, outcome.failure))
        return 1
    return 0
