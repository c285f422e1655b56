"""genv detach: release the environment's GPUs."""

from __future__ import annotations

from ..cli import Context, parse
from ..shell import Script, sync
from ._session import Session, emit

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    parse(argv, {}, 0)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("detach")
    with Session(ctx) as session:
        owner, env = session.owned_env(eid)
        if env["devices"]:
            env["devices"] = []
            session.tx.changed(owner)
        session.deliver_warnings(owner, env)
        script = Script()
        sync(script, env)
        payload = script.encode()
    emit(payload)
    return 0
