"""genv attach: reserve GPUs for the environment (whole, or a share of each),
optionally exactly some GPUs, optionally waiting in line for them."""

from __future__ import annotations

import os

from ..allocate import Request
from ..cli import Context, complete_options, err, parse, parse_indices, wait_argv, wait_seconds
from ..errors import GenvError, UsageError
from ..gpus import parse_count
from ..shell import Script, sync
from . import _line as line
from ._session import Session, emit, request_of

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

OPTIONS = {"--count": True, "--index": True, "--over-subscribe": False, "-o": False, "--wait": True}


def complete(words: List[str]) -> List[str]:
    return complete_options(words, OPTIONS, {"--index": _gpu_indices, "--count": _gpu_counts})


def _gpu_indices() -> List[str]:
    from ..store import StateDir

    cached = (StateDir().peek(os.geteuid()) or {}).get("devices") or {}
    return [str(device["index"]) for device in cached.get("list", [])]


def _gpu_counts() -> List[str]:
    return [str(count) for count in range(1, len(_gpu_indices()) + 1)]


class Plan:
    """What the command line asks for."""

    def __init__(self, argv: List[str]) -> None:
        opts, _ = parse(wait_argv(argv), OPTIONS, 0)
        self.count = parse_count(opts["--count"], "GPU count") if "--count" in opts else None
        self.indices = parse_indices(opts["--index"]) if "--index" in opts else None
        if self.count is not None and self.indices is not None and self.count != len(set(self.indices)):
            raise UsageError("--count %d and --index %s disagree" % (self.count, opts["--index"]))
        self.over_subscribe = "--over-subscribe" in opts or "-o" in opts
        self.wait = wait_seconds(opts["--wait"]) if "--wait" in opts else None

    def request(self, env: Dict[str, Any]) -> Request:
        """The request, after storing the count it implies in the config."""
        config = env["config"]
        if self.indices is not None:
            self.count = len(set(self.indices))
        if self.count is not None:
            config["gpus"] = self.count
        if "gpus" not in config:
            raise GenvError("environment %s has no GPU count; run 'genv config gpus <count>' or use --count"
                            % env["id"])
        base = request_of(config)
        return Request(base.count, base.memory, self.indices, self.over_subscribe)


def _script(env: Dict[str, Any]) -> bytes:
    script = Script()
    sync(script, env)
    return script.encode()


def _first_try(ctx: Context, eid: str, plan: Plan) -> Tuple[bytes, Optional[str], int]:
    """Attach now if possible; with --wait, join the line otherwise.
    Returns the script, the failure (if any) and, when it now waits, the
    number of GPUs it waits for (else 0)."""
    session = Session(ctx, observe=True)
    with session:
        owner, env = session.owned_env(eid)
        if env.get("waiting"):
            raise GenvError("environment %s is already waiting for GPUs (pid %d)" % (eid, env["waiting"]["pid"]))
        config = dict(env["config"])
        request = plan.request(env)
        if env["config"] != config:
            session.tx.changed(owner)
        waiting = plan.wait is not None and plan.wait > 0
        failure = session.attach(owner, env, request, detach=not waiting)
        if failure is not None and waiting and session.final:
            # No release could ever make it possible: fail now, as a plain attach.
            failure = session.attach(owner, env, request)
        waits = failure is not None and waiting and not session.final
        if waits:
            line.join(session, env, request)
            session.tx.changed(owner)
        session.deliver_warnings(owner, env)
        payload = _script(env)
    return payload, failure, request.count if waits else 0


def main(argv: List[str]) -> int:
    plan = Plan(argv)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("attach")
    payload, failure, waiting_for = _first_try(ctx, eid, plan)
    if waiting_for:
        assert plan.wait is not None
        # Signals stay held back until the script is printed (then the
        # process ends): the shell must get what the state says.
        script, failure = line.wait(ctx, eid, plan.wait, waiting_for, _script)
        assert script is not None
        payload = script
    emit(payload)
    if failure is not None:
        err(failure)
        return 1
    return 0
