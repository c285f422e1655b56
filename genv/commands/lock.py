"""genv lock: run a command holding an exclusive lock on each GPU of the
environment, so that environments sharing a GPU can take turns."""

from __future__ import annotations

from .. import gpu_locks, signals
from ..cli import Context, parse
from ..errors import GenvError, UsageError
from ..store import StateDir
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List

FORWARDED = (signals.SIGINT, signals.SIGTERM, signals.SIGHUP)


def complete(words: List[str]) -> List[str]:
    return [] if "--" in words else ["--"]


def split(argv: List[str]) -> List[str]:
    """The command after ``--``; genv's own options (none yet) before it."""
    if "--" not in argv:
        raise UsageError("put the command after --: genv lock -- COMMAND [ARGS...]")
    at = argv.index("--")
    parse(argv[:at], {}, 0)
    command = argv[at + 1:]
    if not command:
        raise UsageError("no command given after --")
    return command


def devices_of(ctx: Context) -> List[Dict[str, Any]]:
    """The GPUs of this terminal's environment, from the state."""
    eid = ctx.require_active()
    with Session(ctx, listing=True) as session:
        _, env = session.owned_env(eid)
        devices = [dict(device) for device in env["devices"]]
    if not devices:
        raise GenvError("environment %s has no GPUs attached: nothing to lock ('genv attach' first)" % eid)
    return devices


def run_holding(command: List[str]) -> int:
    """Run the command (the locks are held by this process meanwhile) and
    return its status, 128+N if a signal N ended it. SIGTERM and SIGHUP sent
    to genv reach the command, also one that arrives while it starts; the
    terminal's Ctrl-C reaches it directly (genv waits), and a Ctrl-C that
    came before the command existed is passed on once it does."""
    import subprocess

    started: List[Any] = []
    early: List[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not started:
            early.append(signum)
            return
        if signum == signals.SIGINT:
            return  # the terminal's ^C reached the command already
        try:
            started[0].send_signal(signum)
        except OSError:
            pass

    # Python handlers (not SIG_IGN) are reset by exec: the command gets the
    # default dispositions.
    for each in FORWARDED:
        signals.signal(each, forward)
    try:
        child = subprocess.Popen(command)
    except OSError as error:
        raise GenvError("cannot run %s: %s" % (command[0], error.strerror),
                        127 if isinstance(error, FileNotFoundError) else 126) from None
    started.append(child)
    for pending in early:
        try:
            child.send_signal(pending)
        except OSError:
            pass
    code = child.wait()
    return 128 - code if code < 0 else code


def main(argv: List[str]) -> int:
    command = split(argv)
    ctx = Context()
    devices = devices_of(ctx)
    held = gpu_locks.hold(StateDir(), devices, ctx.user)
    try:
        return run_holding(command)
    finally:
        gpu_locks.release(held)
