"""genv enforce: find processes that break the rules, and (with --kill) stop them."""

from __future__ import annotations

import sys
import time

from .. import enforce
from ..cli import Context, complete_options, out, output_format, parse, print_json
from ..errors import UsageError
from ..procs import processes
from ..table import render, size
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = {"--kill": False, "--grace": True, "--interval": True, "--format": True, "--json": False}
HEADER = ("RULE", "GPU", "PID", "USER", "ENV ID", "MEMORY", "COMMAND", "OUTCOME")


def complete(words: List[str]) -> List[str]:
    return complete_options(words, OPTIONS, {"--format": lambda: ["table", "json"]})


def _seconds(text: str, option: str, least: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not least <= value < 1e9:
        raise UsageError("invalid %s %r: expected a number of seconds%s" % (
            option, text, " above 0" if least > 0 else ""))
    return value


class Action:
    """One violation and what became of it."""

    def __init__(self, violation: enforce.Violation, user: str, euid: int) -> None:
        self.violation = violation
        self.user = user
        process = violation.process
        self.permitted = euid == 0 or process.uid == euid
        self.outcome = "would stop" if self.permitted else "not permitted"
        self.failed = not self.permitted

    def doc(self) -> Dict[str, Any]:
        p = self.violation.process
        return {"rule": self.violation.rule, "detail": self.violation.detail, "gpu": p.gpu, "pid": p.pid,
                "uid": p.uid, "user": self.user, "env_id": p.env["id"] if p.env else None,
                "memory": None if p.memory is None else p.memory >> 20, "command": p.command,
                "outcome": self.outcome}


def find(ctx: Context) -> List[Action]:
    """The violations now (one look at the GPUs, one at the state)."""
    with Session(ctx, listing=True, observe=True) as session:
        found = enforce.decide(session.attributed(), session.users, session.machine, session.policy(), ctx.user)
    return [Action(v, ctx.user(v.process.uid) if v.process.uid is not None else "?", ctx.euid) for v in found]


def stop(actions: List[Action], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL what is left."""
    import signal

    pending = []
    for action in actions:
        if not action.permitted:
            continue
        p = action.violation.process
        assert p.token is not None
        sent = enforce.signal(p.pid, p.token, signal.SIGTERM, processes)
        if sent == "sent":
            pending.append(action)
        else:
            action.outcome = "already gone" if sent == "gone" else sent
            action.failed = sent != "gone"
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = [a for a in pending if enforce.alive(a.violation.process.pid, a.violation.process.token or "",
                                                       processes)]
        for action in actions:
            if action.outcome == "would stop" and action not in pending and action.permitted:
                action.outcome = "terminated (SIGTERM)"
        if pending:
            time.sleep(0.1)
    for action in actions:
        if action.outcome == "would stop" and action.permitted and action not in pending:
            action.outcome = "terminated (SIGTERM)"
    for action in pending:
        p = action.violation.process
        sent = enforce.signal(p.pid, p.token or "", signal.SIGKILL, processes)
        if sent == "sent":
            action.outcome = "killed (SIGKILL after %gs)" % grace
        elif sent == "gone":
            action.outcome = "terminated (SIGTERM)"
        else:
            action.outcome, action.failed = sent, True


def report(actions: List[Action], form: str) -> None:
    if form == "json":
        print_json([action.doc() for action in actions])
        return
    if not actions:
        out("No process breaks the rules\n")
        return
    out(render(HEADER, [
        (a.violation.rule, "-" if a.violation.process.gpu is None else str(a.violation.process.gpu),
         str(a.violation.process.pid), a.user, a.violation.process.env["id"] if a.violation.process.env else "-",
         size(None if a.violation.process.memory is None else a.violation.process.memory >> 20),
         a.violation.process.command or "", a.outcome) for a in actions]))


def log(action: Action) -> None:
    p = action.violation.process
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = "%s rule=%s pid=%d user=%s gpu=%s env=%s outcome=%s" % (
        stamp, action.violation.rule, p.pid, action.user, "-" if p.gpu is None else p.gpu,
        p.env["id"] if p.env else "-", action.outcome.replace(" ", "_"))
    from ..text import printable

    sys.stdout.write(printable(line) + "\n")
    sys.stdout.flush()


def main(argv: List[str]) -> int:
    opts, _ = parse(argv, OPTIONS, 0)
    if opts.get("--format") == "csv":
        raise UsageError("invalid --format 'csv' for enforce (formats: table, json)")
    form = output_format(opts)
    grace = _seconds(opts["--grace"], "--grace", 0) if "--grace" in opts else 10.0
    interval: Optional[float] = _seconds(opts["--interval"], "--interval", 0.1) if "--interval" in opts else None
    kill = "--kill" in opts
    ctx = Context()
    if interval is None:
        actions = find(ctx)
        if kill:
            stop(actions, grace)
        report(actions, form)
        broke = any(a.failed for a in actions) if kill else bool(actions)
        return 1 if broke else 0
    # A service: one line per action (or, without --kill, per new finding).
    seen = set()
    while True:
        actions = find(ctx)
        if kill:
            stop(actions, grace)
        for action in actions:
            key = (action.violation.rule, action.violation.process.pid, action.violation.process.token)
            if kill or key not in seen:
                log(action)
        seen = {(a.violation.rule, a.violation.process.pid, a.violation.process.token) for a in actions}
        time.sleep(interval)

