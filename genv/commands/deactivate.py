"""genv deactivate: leave the environment and restore the shell exactly."""

from __future__ import annotations

import os

from .. import environments
from ..cli import Context, err, parse
from ..errors import GenvError
from ..shell import HINTS_SET, SAVED, SNAPSHOT, Script, read_snapshot
from ._session import Session, emit, shims

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List, Optional


def complete(words: List[str]) -> List[str]:
    return []


def _restore(ctx: Context) -> bytes:
    saved = read_snapshot(os.environ.get(SNAPSHOT))
    script = Script()
    for name in SAVED:
        script.restore(name, saved[name] if saved else None)
    script.call("_genv_path_remove", shims(ctx))
    script.call("_genv_prompt_clear")
    script.unset("GENV_ENVIRONMENT_ID")
    script.unset(HINTS_SET)
    script.unset(SNAPSHOT)
    return script.encode()


def main(argv: List[str]) -> int:
    parse(argv, {}, 0)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("deactivate")
    payload = _restore(ctx)
    problem: Optional[str] = None
    try:
        session = Session(ctx)
        pid = ctx.shell_pid()
        with session:
            found = environments.find(session.users, eid)
            if found is not None:
                owner, env = found
                if any(terminal["pid"] == pid for terminal in env["terminals"]):
                    environments.check_owner(owner, ctx.euid, eid, ctx.describe)
                    environments.remove_terminal(session.tx.user(owner), env, pid)
                    session.tx.changed(owner)
                    if owner != ctx.euid and environments.forget_join(session.users, owner, env, pid):
                        session.tx.changed(ctx.euid)
    except GenvError as error:
        problem = str(error)
    # The shell is restored even when the state could not be updated.
    emit(payload)
    if problem is not None:
        err("left environment %s in this shell, but: %s" % (eid, problem))
        return 1
    return 0
