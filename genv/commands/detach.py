"""genv detach: release the environment's GPUs."""

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
    ctx.refuse_in_subshell("detach")
    outcome = operations.detach(ctx, eid, os.environ)
    emit(Script().plan(outcome.plan).encode())
    for message in outcome.messages:
        warn(message)
    return 0
