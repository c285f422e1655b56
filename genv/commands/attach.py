"""genv attach: reserve GPUs for the environment (whole, or a share of each),
optionally exactly some GPUs, optionally waiting in line for them."""

from __future__ import annotations

import os

from .. import options
from ..core import operations
from ..core.context import Context
from ..errors import UsageError
from ..gpus import parse_count
from ..report import warn
from ..shell import render

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List

OPTIONS: options.Spec = {"--count": options.VALUE, "--index": options.VALUE, "--over-subscribe": options.FLAG,
                         "-o": "--over-subscribe", "--wait": options.WAIT, options.FOR: options.VALUE}


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--index": _gpu_indices, "--count": _gpu_counts})


def _gpu_indices() -> List[str]:
    from ..store import StateDir

    cached = (StateDir().peek(os.geteuid()) or {}).get("devices") or {}
    return [str(device["index"]) for device in cached.get("list", [])]


def _gpu_counts() -> List[str]:
    return [str(count) for count in range(1, len(_gpu_indices()) + 1)]


def request(argv: List[str]) -> operations.AttachRequest:
    """What the command line asks for."""
    opts, _ = options.parse(argv, OPTIONS, 0)
    count = parse_count(opts["--count"], "GPU count") if "--count" in opts else None
    indices = options.indices(opts["--index"]) if "--index" in opts else None
    if count is not None and indices is not None and count != len(indices):
        raise UsageError("--count %d and --index %s disagree" % (count, opts["--index"]))
    wait = options.wait_seconds(opts["--wait"]) if "--wait" in opts else None
    reserve = options.reserve_seconds(opts[options.FOR]) if options.FOR in opts else None
    return operations.AttachRequest(count, indices, "--over-subscribe" in opts, wait, reserve)


def main(argv: List[str]) -> int:
    asked = request(argv)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("attach")
    # Once it waited, interrupting signals stay held back until the script
    # is printed (then the process ends): the shell gets what the state says.
    outcome = operations.attach(ctx, eid, asked, os.environ)
    render(outcome)
    if outcome.failure is not None:
        warn(outcome.failure)
        return 1
    return 0
