"""genv sync: bring this terminal in line with its environment's state."""

from __future__ import annotations

import os

from .. import options
from ..core import operations
from ..core.context import Context
from ..shell import render

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


OPTIONS: options.Spec = {"--no-wait": options.FLAG}


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {})


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    ctx = Context()
    if ctx.eid is None:
        return 0  # not in an environment: nothing to follow
    ctx.refuse_in_subshell("sync")
    outcome = operations.sync(ctx, ctx.eid, os.environ, wait="--no-wait" not in opts)
    render(outcome)
    return 0
