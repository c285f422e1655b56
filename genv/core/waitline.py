"""The line of requests waiting for GPUs (``attach --wait``, ``run --wait``,
the SDK's ``environment(wait=...)``).

A request that cannot be met joins the line: its environment records the
waiting process (PID and token, so that a waiter killed with ``kill -9``
leaves the line at the next command), when it joined and what it asks for.
While it waits, the process is named ``genv-waiting`` in the kernel
(``Name``): a place counts only while its process is so named, which
anyone can check in /proc (``environments.places``).

The waiter sleeps until the state folder changes or a process that holds or
claims what it waits for ends (``wake.Wake``: inotify and pidfds). Then it
looks, without the lock, whether its request could be met now behind those
ahead of it; only then does it take the lock and try for real (asking
nvidia-smi for the processes at most every ``OBSERVE_EVERY`` seconds while
GPUs look busy). What changes no file and ends no process (a waiter in line
stopped with Ctrl-Z or continued) it checks every ``FALLBACK`` seconds in
/proc, and it looks in full every ``FULL_EVERY`` seconds all the same (a
policy that changed); where the kernel cannot wake it (Python 3.8: no
pidfds), it looks every ``POLL`` seconds. It says on stderr that it waits
and how many requests are ahead, whenever that changes.
"""

from __future__ import annotations

import os
import time

from .. import environments, signals
from ..allocate import Refused, Request, Waiter, allocate
from ..clock import wall
from ..errors import GenvError
from ..report import warn
from .session import Session, waiting_request

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, TypeVar

    from .context import Context
    from .waitname import Name

    T = TypeVar("T")

POLL = 0.25
"""Seconds between looks where the kernel cannot wake the waiter (no
inotify, no pidfds: Python 3.8), and the longest sleep of a waiter given a
``checkpoint`` (the SDK: a held interrupt is delivered there)."""
FALLBACK = 2.0
"""Seconds between checks, when nothing woke the waiter, of what no file or
process end tells: whether a process waiting in line stopped, continued or
changed its name (a few reads of /proc; a full look only if one did)."""
FULL_EVERY = 10.0
"""Seconds between full looks when nothing woke the waiter (a policy that
changed, say)."""
OBSERVE_EVERY = 2.0  # seconds between nvidia-smi process queries while waiting


def join(session: Session, owner: int, env: Dict[str, Any], request: Request, name: "Name",
         reserve: Optional[float] = None) -> None:
    """Put ``env`` (``owner``'s) in line for ``request`` (attached for
    ``reserve`` seconds once it gets its GPUs), with this process
    as the waiter (the caller marks the owner's state changed, and calls
    ``name.restore()`` once it no longer waits). A place counts only with a
    process of the environment's owner (``environments.waiter_ok``): root
    waits in its own environments only, and is refused at once elsewhere."""
    if owner != session.ctx.euid:
        raise GenvError("cannot wait in line in environment %s: it is %s's, and a place in line counts only while "
                        "a process of the environment's owner waits (root waits in its own environments only)"
                        % (env["id"], session.ctx.describe(owner)))
    facts = session.processes
    token = facts.token(os.getpid())
    assert token is not None
    # Arrival is when the line is joined, under the lock (so in order), on
    # the process clock (seconds since boot: a wall-clock step does not
    # reorder the line); nothing is taken from other users' records, which
    # they write. ``since`` is for people.
    arrived = facts.clock()
    name.waiting()  # before the place is written: it counts from the start
    env["waiting"] = {
        "pid": os.getpid(), "token": token, "since": wall(), "arrived": arrived, "count": request.count,
        "memory": request.memory, "indices": list(request.indices) if request.indices else None,
        "over_subscribe": request.over_subscribe,
    }
    if reserve is not None:
        env["waiting"]["for"] = reserve  # the end counts from the attach


def _kernel(facts: Any, pids: Iterable[int]) -> Dict[int, Tuple[bool, Optional[str]]]:
    """What the kernel says of these waiting processes that decides whether
    their places count, and changes no file: stopped or not, their name."""
    return {pid: (facts.state(pid) in ("T", "t"), facts.name(pid)) for pid in pids}


def _kernel_changed(seen: Dict[int, Tuple[bool, Optional[str]]]) -> bool:
    from ..procs import processes

    facts = processes()
    try:
        return _kernel(facts, seen) != seen
    finally:
        facts.close()


def _estimate(folder: Any, eid: str, busy: Dict[int, List[str]],
              judge: Callable[[Dict[int, Dict[str, Any]], List[Dict[str, Any]], int, Dict[str, Any]], Optional[str]],
              wake: Any) -> Tuple[bool, int, Dict[int, Tuple[bool, Optional[str]]]]:
    """Without the lock: could the waiting request be met now, and how many
    requests are ahead of it? (The real decision is made under the lock.)
    Also what the kernel says of the places' processes (``_kernel``).
    ``wake`` is told which processes to watch: the terminals of the
    environments that hold GPUs or wait in line, and their waiters."""
    from ..procs import processes

    # Files that did not change are not parsed again.
    facts = processes()
    try:
        users = environments.live_view(folder.read_all(reuse=True), facts)
        watched: Set[Tuple[int, str]] = set()
        for state in users.values():
            for other in state["envs"]:
                if other["devices"] or other.get("waiting") or other["id"] == eid:
                    watched.update((t["pid"], t["token"]) for t in other["terminals"])
                    if other.get("waiting"):
                        watched.add((other["waiting"]["pid"], other["waiting"]["token"]))
        wake.watch(watched, facts)
        found = environments.find(users, eid, os.geteuid())
        if found is None or not found[1].get("waiting"):
            return True, 0, {}  # something changed: look under the lock
        env = found[1]
        machine = (users.get(os.geteuid()) or {}).get("devices") or {}
        gpus = machine.get("list", [])

        def judging(uid: int, other: Dict[str, Any]) -> Optional[str]:
            return judge(users, gpus, uid, other)

        placed = environments.places(users, facts, judging)
        ahead = environments.ahead_of(users, env, facts, placed=placed)
        # What may change behind the waiter's back: the places ahead (they
        # may stop), the ones that do not count now (they may count again).
        seen = _kernel(facts, [other["waiting"]["pid"] for _, other in ahead]
                       + [other["waiting"]["pid"] for _, other, why in placed if why != environments.WAITING])
        try:
            allocate(users, env, gpus, waiting_request(env["waiting"]), 0.0, str, busy,
                     [Waiter(uid, other, waiting_request(other["waiting"])) for uid, other in ahead])
        except Refused:
            return False, len(ahead), seen
        return True, len(ahead), seen
    finally:
        facts.close()


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
            if signals.sigpending() & signals.HELD:
                # Interrupted just now: commit nothing (the state must not
                # hold GPUs that the caller, about to stop, will not get).
                raise KeyboardInterrupt
            env["waiting"] = None
            session.tx.changed(owner)
            return True, done(env), failure, {}
        return False, None, failure, session.busy()


def leave(ctx: Context, eid: str) -> None:
    """Leave the line (Ctrl-C): nothing more is held than before. (The
    caller holds back ``signals.HELD`` signals meanwhile.)"""
    with Session(ctx) as session:
        found = session.mine(eid)
        if found is not None and (found[1].get("waiting") or {}).get("pid") == os.getpid():
            found[1]["waiting"] = None
            session.tx.changed(found[0])


def wait(ctx: Context, eid: str, seconds: float, count: int, done: Callable[[Dict[str, Any]], T],
         detach: bool = True, checkpoint: Optional[Callable[[], None]] = None) -> Tuple[Optional[T], Optional[str]]:
    """Wait in line for at most ``seconds`` (``inf``: as long as it takes).
    Returns ``done(env)`` (computed under the lock, once attached or given
    up) and the failure (None once attached). From the last try on, SIGINT,
    SIGTERM and SIGHUP are held back (``signals.HELD``; the caller restores its own
    signal mask once what it prints or sets agrees with the state; between
    tries the caller's mask is in force). KeyboardInterrupt leaves the line.
    ``detach``: giving up detaches the environment, as a plain attach would
    (genv run and the SDK remove it instead). ``checkpoint`` is called
    around each sleep (the SDK delivers a held interrupt there); a sleep then
    lasts at most ``POLL``."""
    from ..policy import load
    from ..store import StateDir
    from ..wake import Wake
    from .session import judge

    folder = StateDir()
    deadline = time.monotonic() + seconds
    told: Optional[int] = None
    could = False
    busy: Dict[int, List[str]] = {}
    observed = time.monotonic()
    what = "%d GPU%s" % (count, "" if count == 1 else "s")

    policy: List[Any] = []  # read afresh at each look (the decision under the lock says what is wrong with it)

    def judging(users: Dict[int, Dict[str, Any]], machine: List[Dict[str, Any]], uid: int,
                env: Dict[str, Any]) -> Optional[str]:
        if not policy:
            policy.append(load(lambda message: None))
        return judge(policy[0], users, machine, ctx.user, uid, env)

    try:
        with Wake(folder.path) as wake:
            look = True  # the first look is now
            due = full = 0.0  # when the next check, and the next full look, are due if nothing wakes the waiter
            seen: Dict[int, Tuple[bool, Optional[str]]] = {}
            while True:
                now = time.monotonic()
                looked = look or now >= full or (now >= due and (not wake.complete or _kernel_changed(seen)))
                if looked:
                    policy.clear()
                    could, ahead, seen = _estimate(folder, eid, busy, judging, wake)
                    full = now + (FULL_EVERY if wake.complete else POLL)
                    if ahead != told:
                        warn("waiting for %s: %s ahead in line" % (
                            what, "no request" if not ahead else "%d request%s" % (ahead, "" if ahead == 1 else "s")))
                        told = ahead
                if looked or now >= due:
                    due = now + (FALLBACK if wake.complete else POLL)
                give_up = now >= deadline
                # GPUs that processes outside genv keep busy are looked at
                # again every OBSERVE_EVERY seconds (those processes may have
                # ended): no file changes when they do.
                if give_up or (looked and could and not busy) or (busy and now - observed >= OBSERVE_EVERY):
                    mask = signals.pthread_sigmask(signals.SIG_BLOCK, signals.HELD)
                    over, result, failure, busy = _try(ctx, eid, give_up, done, detach)
                    observed = time.monotonic()
                    if over:
                        return result, failure
                    signals.pthread_sigmask(signals.SIG_SETMASK, mask)
                    now = time.monotonic()
                until = min(due, deadline, observed + OBSERVE_EVERY if busy else due)
                if checkpoint is not None:
                    until = min(until, now + POLL)
                    checkpoint()
                look = wake.sleep(until - now)
                if checkpoint is not None:
                    checkpoint()
    except KeyboardInterrupt:
        signals.pthread_sigmask(signals.SIG_BLOCK, signals.HELD)
        leave(ctx, eid)
        raise
