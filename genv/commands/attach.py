"""genv attach: reserve as many free GPUs as the environment is configured for."""

from __future__ import annotations

from .. import envs
from ..cli import Context, err, parse
from ..errors import GenvError
from ..shell import Script, emit, sync
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List, Optional


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    parse(argv, {}, 0)
    ctx = Context()
    eid = ctx.require_active()
    session = Session(ctx, need_devices=True)
    failure: Optional[str] = None
    with session:
        owner, env = session.owned_env(eid)
        gpus = env["config"].get("gpus")
        if gpus is None:
            raise GenvError("environment %s has no GPU count; run 'genv config gpus <count>' first" % eid)
        before = list(env["devices"])
        try:
            envs.allocate(session.users, env, session.machine, gpus, session.now)
        except GenvError as error:
            failure = str(error)
        if env["devices"] != before:  # another terminal may just pick them up
            session.tx.changed(owner)
        session.deliver_warnings(owner, env)
    script = Script()
    sync(script, env)
    emit(script)
    if failure is not None:
        err(failure)
        return 1
    return 0
