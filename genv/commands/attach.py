"""genv attach: reserve GPUs for the environment (whole, or a share of each),
optionally exactly some GPUs, optionally waiting in line for them."""

from __future__ import annotations

import os
import time

from .. import environments
from ..allocate import Refused, Request, Waiter, allocate
from ..cli import Context, complete_options, err, parse
from ..errors import GenvError, UsageError
from ..gpus import parse_count
from ..shell import Script, sync
from ._session import Session, emit, request_of, waiting_request

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

OPTIONS = {"--count": True, "--index": True, "--over-subscribe": False, "-o": False, "--wait": True}
POLL = 0.25  # seconds between looks at the state while waiting
OBSERVE_EVERY = 2.0  # seconds between nvidia-smi process queries while waiting


def complete(words: List[str]) -> List[str]:
    return complete_options(words, OPTIONS, {"--index": _gpu_indices, "--count": _gpu_counts})


def _gpu_indices() -> List[str]:
    from ..store import StateDir

    cached = (StateDir().peek(os.geteuid()) or {}).get("devices") or {}
    return [str(device["index"]) for device in cached.get("list", [])]


def _gpu_counts() -> List[str]:
    return [str(count) for count in range(1, len(_gpu_indices()) + 1)]


def _argv(argv: List[str]) -> List[str]:
    """``--wait`` takes an optional number of seconds: without one, it waits
    as long as it takes."""
    result = []
    for position, arg in enumerate(argv):
        if arg == "--wait":
            following = argv[position + 1] if position + 1 < len(argv) else None
            if following is None or following.startswith("-") or not following[:1].isdigit():
                arg = "--wait=forever"
        result.append(arg)
    return result


def _seconds(text: str) -> float:
    if text == "forever":
        return float("inf")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise UsageError("invalid --wait %r: expected a number of seconds" % text)
    return value


def _indices(text: str) -> List[int]:
    parts = text.split(",")
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UsageError("invalid --index %r: expected GPU indices such as 0 or 0,2" % text)
    return [parse_count(part, "GPU index") for part in parts]


class Plan:
    """What the command line asks for."""

    def __init__(self, argv: List[str]) -> None:
        opts, _ = parse(_argv(argv), OPTIONS, 0)
        self.count = parse_count(opts["--count"], "GPU count") if "--count" in opts else None
        self.indices = _indices(opts["--index"]) if "--index" in opts else None
        if self.count is not None and self.indices is not None and self.count != len(set(self.indices)):
            raise UsageError("--count %d and --index %s disagree" % (self.count, opts["--index"]))
        self.over_subscribe = "--over-subscribe" in opts or "-o" in opts
        self.wait = _seconds(opts["--wait"]) if "--wait" in opts else None

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
        failure = session.attach(owner, env, request, detach=plan.wait is None or plan.wait == 0)
        waits = failure is not None and plan.wait is not None and plan.wait > 0
        if waits:
            token = session.processes.token(os.getpid())
            assert token is not None
            env["waiting"] = {
                "pid": os.getpid(), "token": token, "since": session.now, "count": request.count,
                "memory": request.memory, "indices": list(request.indices) if request.indices else None,
                "over_subscribe": request.over_subscribe,
            }
        session.deliver_warnings(owner, env)
        payload = _script(env)
    return payload, failure, request.count if waits else 0


def _estimate(folder: Any, eid: str, busy: Dict[int, List[str]]) -> Tuple[bool, int]:
    """Without the lock: could the waiting request be met now, and how many
    requests are ahead of it? (The real decision is made under the lock.)"""
    from ..procs import processes

    # Files that did not change are not parsed again.
    users = environments.live_view(folder.read_all(reuse=True), processes())
    found = environments.find(users, eid)
    if found is None or not found[1].get("waiting"):
        return True, 0  # something changed: look under the lock
    env = found[1]
    ahead = environments.ahead_of(users, env)
    machine = (users.get(os.geteuid()) or {}).get("devices") or {}
    try:
        allocate(users, env, machine.get("list", []), waiting_request(env["waiting"]), 0.0, str, busy,
                 [Waiter(uid, other, waiting_request(other["waiting"])) for uid, other in ahead])
    except Refused:
        return False, len(ahead)
    return True, len(ahead)


def _try_in_line(ctx: Context, eid: str, give_up: bool) -> Tuple[Optional[bytes], Optional[str], Dict[int, List[str]]]:
    """Under the lock: take the GPUs if the line allows. Returns the script
    when done (attached, or given up), the failure, and the busy GPUs seen."""
    session = Session(ctx, observe=True)
    with session:
        owner, env = session.owned_env(eid)
        waiting = env.get("waiting")
        if not waiting or waiting["pid"] != os.getpid():
            raise GenvError("environment %s lost its place in line (another command took it)" % eid)
        failure = session.attach(owner, env, waiting_request(waiting), detach=give_up)
        if failure is None or give_up:
            env["waiting"] = None
            session.tx.changed(owner)
            return _script(env), failure, {}
        return None, failure, session.busy()


def _leave_line(ctx: Context, eid: str) -> None:
    with Session(ctx) as session:
        found = environments.find(session.users, eid)
        if found is not None and (found[1].get("waiting") or {}).get("pid") == os.getpid():
            found[1]["waiting"] = None
            session.tx.changed(found[0])


def _wait(ctx: Context, eid: str, seconds: float, count: int) -> Tuple[bytes, Optional[str]]:
    import signal

    from ..store import StateDir

    folder = StateDir()
    deadline = time.monotonic() + seconds
    told: Optional[int] = None
    busy: Dict[int, List[str]] = {}
    observed = time.monotonic()
    what = "%d GPU%s" % (count, "" if count == 1 else "s")
    try:
        while True:
            could, ahead = _estimate(folder, eid, busy)
            if ahead != told:
                err("waiting for %s: %s ahead in line" % (
                    what, "no request" if not ahead else "%d request%s" % (ahead, "" if ahead == 1 else "s")))
                told = ahead
            now = time.monotonic()
            give_up = now >= deadline
            if give_up or (could and (not busy or now - observed >= OBSERVE_EVERY)):
                # From here until the script is printed, a signal must not
                # split the state from the shell: it is held back.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
                payload, failure, busy = _try_in_line(ctx, eid, give_up)
                observed = time.monotonic()
                if payload is not None:
                    return payload, failure
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
            time.sleep(POLL)
    except KeyboardInterrupt:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        _leave_line(ctx, eid)
        raise


def main(argv: List[str]) -> int:
    plan = Plan(argv)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("attach")
    payload, failure, waiting_for = _first_try(ctx, eid, plan)
    if waiting_for:
        assert plan.wait is not None
        payload, failure = _wait(ctx, eid, plan.wait, waiting_for)
    emit(payload)
    if failure is not None:
        err(failure)
        return 1
    return 0
