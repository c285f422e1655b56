"""genv enforce: find processes that break the rules, and (with --kill) stop them."""

from __future__ import annotations

import sys
import time

from .. import enforce, sightings
from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core.context import Context
from ..core.session import Session
from ..errors import GenvError, UsageError
from ..procs import processes
from ..table import render, size

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Set, Tuple

OPTIONS: options.Spec = {"--kill": options.FLAG, "--grace": options.VALUE, "--reclaim": options.FLAG,
                         "--interval": options.VALUE, **FORMAT_OPTIONS}
HEADER = ("RULE", "GPU", "PID", "USER", "ENV ID", "MEMORY", "COMMAND", "OUTCOME")
MIN_INTERVAL = 0.1
ERROR = 2  # exit status when enforce cannot look (1: the rules are broken)


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--format": lambda: ["table", "json"]})


def _seconds(text: str, option: str, least: float) -> float:
    from ..sizes import parse_seconds

    return parse_seconds(text, option, least, error=UsageError)


class Action:
    """One violation and what became of it."""

    def __init__(self, violation: enforce.Violation, user: str, euid: int, spared: Optional[str] = None) -> None:
        self.violation = violation
        self.user = user
        process = violation.process
        if violation.rule == "idle":
            self.permitted = euid in (0, violation.uid)  # a user reclaims only their own
            self.outcome = "would reclaim" if self.permitted else "not permitted"
            self.failed = True  # until reclaimed
        elif process is None:
            self.permitted = False
            self.outcome = "no process to stop" if violation.decided else "admin must decide"
            self.failed = True  # the rule stays broken whatever --kill does
        elif spared is not None:  # Slurm: a job's process (or maybe one) is Slurm's to stop
            self.permitted = False
            self.outcome = spared
            self.failed = True
        else:
            self.permitted = euid == 0 or process.uid == euid
            self.outcome = "would stop" if self.permitted else "not permitted"
            self.failed = not self.permitted

    def cells(self) -> Dict[str, Any]:
        v = self.violation
        p = v.process
        return {"rule": v.rule, "detail": v.detail, "gpu": v.gpu, "pid": p.pid if p else None,
                "uid": v.uid, "user": self.user, "env_id": v.env["id"] if v.env else None,
                "memory": None if p is None or p.memory is None else p.memory >> 20,
                "command": p.command if p else None, "outcome": self.outcome}


def find(ctx: Context, reclaim: bool = False) -> Tuple[List[Action], List[int]]:
    """The violations now (one look at the GPUs, one at the state); with
    ``reclaim``, the idle environments the caller may reclaim are detached
    (under the lock, their terminals told), and the other rules are judged
    on what is held then. Also the users some of whose environments root's
    record leaves out (``sightings.over``): their claims it does not hold
    win no conflict and lose none."""
    session = Session(ctx, listing=True, observe=True, details=True, fallback=True)
    with session:
        actions, over = _find(session, ctx, reclaim)
    for action in actions:  # a file swapped for something else under the lock: nothing was reclaimed there
        if action.outcome == "reclaimed" and action.violation.uid in session.tx.unwritten:
            action.outcome, action.failed = "could not reclaim", True
    return actions, over


def _find(session: Session, ctx: Context, reclaim: bool) -> Tuple[List[Action], List[int]]:
    from ..environments import places, release
    from ..sizes import format_duration

    # Anyone can hold the state lock: enforcement goes on without it, on
    # each file's last state, with the rules that need no record of
    # root's and change nothing (a round that gets the lock does the rest).
    unlocked = session.tx.unlocked
    if unlocked is not None:
        from ..report import warn

        warn("the state lock on %s is held by %s: judging without it, and leaving conflicts and idle "
             "environments to a round that gets it" % (session.folder.path, unlocked))
        reclaim = False
    else:
        session.witness()  # run by root: what it sees now counts, its claims first seen now

    def judge() -> List[Action]:
        found = enforce.decide(session.attributed(), session.users, session.machine, session.policy(), ctx.user,
                               session.seen(), session.boot_id(), session.boot,
                               places(session.users, session.processes, session.judge), over)
        if unlocked is not None:
            found = [v for v in found if v.rule not in ("conflict", "idle")]
        view = session.slurm
        return [Action(v, ctx.user(v.uid) if v.uid is not None else "?", ctx.euid,
                       view.spare(v.process) if view is not None and v.process is not None else None)
                for v in found]

    over = sightings.over(session.users, session.known_machine())
    actions = judge()
    if not reclaim:
        return actions, over
    reclaimed = []
    for action in actions:
        v = action.violation
        if v.rule == "idle" and action.permitted and v.env is not None and v.uid is not None:
            release(v.env, "after %s idle" % format_duration(v.idle))
            session.tx.changed(v.uid)
            action.outcome, action.failed = "reclaimed", False
            reclaimed.append(action)
    if not reclaimed:
        return actions, over
    session.reattribute()  # their processes, if any, are misplaced now
    return reclaimed + [action for action in judge() if action.violation.rule != "idle"] + [
        action for action in actions if action.violation.rule == "idle" and action not in reclaimed], over


def stop(actions: List[Action], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL what is left."""
    import signal

    pending = []
    for action in actions:
        process = action.violation.process
        if not action.permitted or process is None:
            continue
        sent = enforce.signal(process.pid, process.token or "", signal.SIGTERM, processes)
        if sent == "sent":
            pending.append(action)
        else:
            action.outcome = "already gone" if sent == "gone" else sent
            action.failed = sent != "gone"
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        still = []
        for action in pending:
            process = action.violation.process
            assert process is not None
            if enforce.alive(process.pid, process.token or "", processes):
                still.append(action)
            else:
                action.outcome = "terminated (SIGTERM)"
        pending = still
        if pending:
            time.sleep(0.1)
    for action in pending:
        process = action.violation.process
        assert process is not None
        sent = enforce.signal(process.pid, process.token or "", signal.SIGKILL, processes)
        if sent == "sent":
            action.outcome = "killed (SIGKILL after %gs)" % grace
        elif sent == "gone":
            action.outcome = "terminated (SIGTERM)"
        else:
            action.outcome, action.failed = sent, True


def report(actions: List[Action], form: str) -> None:
    if form == "json":
        print_json([action.cells() for action in actions])
        return
    if not actions:
        out("No process breaks the rules\n")
        return
    rows = []
    for action in actions:
        c = action.cells()
        rows.append((c["rule"], "-" if c["gpu"] is None else str(c["gpu"]), "-" if c["pid"] is None else str(c["pid"]),
                     c["user"], c["env_id"] or "-", size(c["memory"]), c["command"] or "", c["outcome"]))
    out(render(HEADER, rows))


def log(action: Action) -> None:
    from ..text import printable

    c = action.cells()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = "%s rule=%s pid=%s user=%s gpu=%s env=%s outcome=%s" % (
        stamp, c["rule"], "-" if c["pid"] is None else c["pid"], c["user"], "-" if c["gpu"] is None else c["gpu"],
        c["env_id"] or "-", c["outcome"].replace(" ", "_"))
    sys.stdout.write(printable(line) + "\n")
    sys.stdout.flush()


def _round(ctx: Context, kill: bool, grace: float, reclaim: bool, told: Set[int]) -> List[Action]:
    """One look (and, with ``kill``, its signals). Each user over root's
    record is named once while they stay over it (``told``: those named)."""
    from ..limits import MAX_RECORD
    from ..report import warn
    from ..sizes import format_size

    try:
        actions, over = find(ctx, reclaim)
    except GenvError as error:
        raise GenvError(str(error), ERROR) from None
    for uid in over if ctx.euid == 0 else ():
        if uid not in told:
            warn("user %s claims more GPUs than root's record keeps (%s per user): the rest are not "
                 "judged; an admin must look" % (ctx.describe(uid), format_size(MAX_RECORD)))
    told.intersection_update(over)
    told.update(over)
    if kill:
        stop(actions, grace)
    return actions


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    if opts.get("--format") == "csv":
        raise UsageError("invalid --format 'csv' for enforce (formats: table, json)")
    form = output_format(opts)
    kill = "--kill" in opts
    reclaim = "--reclaim" in opts
    if "--grace" in opts and not kill:
        raise UsageError("--grace goes with --kill")
    grace = _seconds(opts["--grace"], "--grace", 0) if "--grace" in opts else 10.0
    interval: Optional[float] = None
    if "--interval" in opts:
        interval = _seconds(opts["--interval"], "--interval", MIN_INTERVAL)
        if "--format" in opts or "--json" in opts:
            raise UsageError("--interval logs one line per action; --format is for a single run")
    ctx = Context()
    told: Set[int] = set()
    if interval is None:
        actions = _round(ctx, kill, grace, reclaim, told)
        report(actions, form)
        # Broken: what was not (or could not be) set right.
        broke = any(a.failed or a.outcome == "would stop" for a in actions)
        return 1 if broke else 0
    # A service: one line per action (or, without --kill, per new finding);
    # a round that cannot look is logged, and the next one tries again.
    seen = set()
    while True:
        try:
            actions = _round(ctx, kill, grace, reclaim, told)
        except GenvError as error:
            from ..report import warn

            warn("%s this round failed: %s" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), error))
            actions = []
        keys = set()
        for action in actions:
            p = action.violation.process
            v = action.violation
            key = (v.rule, p.pid if p else -1, p.token if p else None, None if p else (v.env or {}).get("id"), v.gpu)
            keys.add(key)
            if kill or key not in seen or action.outcome == "reclaimed":
                log(action)
        seen = keys
        time.sleep(interval)
