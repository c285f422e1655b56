"""The line of requests waiting for GPUs (``attach --wait``, ``run --wait``,
the SDK's ``environment(wait=...)``).

A request that cannot be met joins the line: its environment records the
waiting process (PID and token, so that a waiter killed with ``kill -9``
leaves the line at the next command), when it joined and what it asks for.
The waiter then looks, about four times a second and without the lock,
whether its request could be met now behind those ahead of it; only then
does it take the lock and try for real (asking nvidia-smi for the processes
at most every ``OBSERVE_EVERY`` seconds while GPUs look busy). It says on
stderr that it waits and how many requests are ahead, whenever that changes.
"""

from __future__ import annotations

import os
import time

from .. import environments, signals
from ..allocate import Refused, Request, Waiter, allocate
from ..errors import GenvError
from ..report import warn
from .session import Session, waiting_request

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

    from .context import Context

    T = TypeVar("T")

HELD = frozenset((signals.SIGINT, signals.SIGTERM, signals.SIGHUP))
"""Held back while the state changes, so that an interrupt cannot leave the
state and what the caller prints or sets disagreeing."""

POLL = 0.25  # seconds between looks at the state while waiting
OBSERVE_EVERY = 2.0  # seconds between nvidia-smi process queries while waiting


def join(session: Session, env: Dict[str, Any], request: Request) -> None:
    """Put ``env`` in line for ``request``, with this process as the waiter
    (the caller marks the owner's state changed)."""
    facts = session.processes
    token = facts.token(os.getpid())
    assert token is not None
    # Arrival is when the line is joined, under the lock, on the process
    # clock (seconds since boot: a wall-clock step does not reorder the
    # line), and after everyone in line now. ``since`` is for people.
    arrived = facts.clock()
    queue = environments.line(session.users, facts)
    if queue:
        arrived = max(arrived, environments.arrival(queue[-1][1]["waiting"], facts) + 1e-6)
    env["waiting"] = {
        "pid": os.getpid(), "token": token, "since": time.time(), "arrived": arrived, "count": request.count,
        "memory": request.memory, "indices": list(request.indices) if request.indices else None,
        "over_subscribe": request.over_subscribe,
    }


def _estimate(folder: Any, eid: str, busy: Dict[int, List[str]]) -> Tuple[bool, int]:
    """Without the lock: could the waiting request be met now, and how many
    requests are ahead of it? (The real decision is made under the lock.)"""
    from ..procs import processes

    # Files that did not change are not parsed again.
    facts = processes()
    users = environments.live_view(folder.read_all(reuse=True), facts)
    found = environments.find(users, eid)
    if found is None or not found[1].get("waiting"):
        return True, 0  # something changed: look under the lock
    env = found[1]
    ahead = environments.ahead_of(users, env, facts)
    machine = (users.get(os.geteuid()) or {}).get("devices") or {}
    try:
        allocate(users, env, machine.get("list", []), waiting_request(env["waiting"]), 0.0, str, busy,
                 [Waiter(uid, other, waiting_request(other["waiting"])) for uid, other in ahead])
    except Refused:
        return False, len(ahead)
    return True, len(ahead)


def _try(ctx: Context, eid: str, give_up: bool, done: Callable[[Dict[str, Any]], T],
         detach: bool) -> Tuple[bool, Optional[T], Optional[str], Dict[int, List[str]]]:
    """Under the lock: take the GPUs if the line allows. Returns whether the
    wait is over (attached, or given up), ``done(env)`` computed under the
    lock when it is, the failure, and the busy GPUs seen."""
    session = Session(ctx, observe=True)
    with session:
        owner, env = session.owned_env(eid)
        waiting = env.get("waiting")
        if not waiting or waiting["pid"] != os.getpid():
            raise GenvError("environment %s lost its place in line (another command took it)" % eid)
        failure = session.attach(owner, env, waiting_request(waiting), detach=give_up and detach)
        if failure is None or give_up:
            if signals.sigpending() & HELD:
                # Interrupted just now: commit nothing (the state must not
                # hold GPUs that the caller, about to stop, will not get).
                raise KeyboardInterrupt
            env["waiting"] = None
            session.tx.changed(owner)
            return True, done(env), failure, {}
        return False, None, failure, session.busy()


def leave(ctx: Context, eid: str) -> None:
    """Leave the line (Ctrl-C): nothing more is held than before. (The
    caller holds back ``HELD`` signals meanwhile.)"""
    with Session(ctx) as session:
        found = environments.find(session.users, eid)
        if found is not None and (found[1].get("waiting") or {}).get("pid") == os.getpid():
            found[1]["waiting"] = None
            session.tx.changed(found[0])


def wait(ctx: Context, eid: str, seconds: float, count: int, done: Callable[[Dict[str, Any]], T],
         detach: bool = True, checkpoint: Optional[Callable[[], None]] = None) -> Tuple[Optional[T], Optional[str]]:
    """Wait in line for at most ``seconds`` (``inf``: as long as it takes).
    Returns ``done(env)`` (computed under the lock, once attached or given
    up) and the failure (None once attached). From the last try on, SIGINT,
    SIGTERM and SIGHUP are held back (``HELD``; the caller restores its own
    signal mask once what it prints or sets agrees with the state; between
    tries the caller's mask is in force). KeyboardInterrupt leaves the line.
    ``detach``: giving up detaches the environment, as a plain attach would
    (genv run and the SDK remove it instead). ``checkpoint`` is called
    around each sleep (the SDK raises a held interrupt there)."""
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
                warn("waiting for %s: %s ahead in line" % (
                    what, "no request" if not ahead else "%d request%s" % (ahead, "" if ahead == 1 else "s")))
                told = ahead
            now = time.monotonic()
            give_up = now >= deadline
            # GPUs that processes outside genv keep busy are looked at again
            # every OBSERVE_EVERY seconds (those processes may have ended).
            if give_up or (could and not busy) or (busy and now - observed >= OBSERVE_EVERY):
                mask = signals.pthread_sigmask(signals.SIG_BLOCK, HELD)
                over, result, failure, busy = _try(ctx, eid, give_up, done, detach)
                observed = time.monotonic()
                if over:
                    return result, failure
                signals.pthread_sigmask(signals.SIG_SETMASK, mask)
            if checkpoint is not None:
                checkpoint()
            time.sleep(POLL)
            if checkpoint is not None:
                checkpoint()
    except KeyboardInterrupt:
        signals.pthread_sigmask(signals.SIG_BLOCK, HELD)
        leave(ctx, eid)
        raise

