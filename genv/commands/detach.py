"""genv detach: release the environment's GPUs."""

from __future__ import annotations

import os

from .. import options
from ..core import operations
from ..core.context import Context
from ..shell import render

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
    render(outcome)
    return 0
