"""genv attach: reserve as many free GPUs as the environment is configured for."""

from __future__ import annotations

from ..cli import Context, err, parse
from ..errors import GenvError
from ..shell import Script, sync
from ._session import Session, emit, request_of

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    parse(argv, {}, 0)
    ctx = Context()
    eid = ctx.require_active()
    ctx.refuse_in_subshell("attach")
    session = Session(ctx, need_devices=True)
    with session:
        owner, env = session.owned_env(eid)
        if "gpus" not in env["config"]:
            raise GenvError("environment %s has no GPU count; run 'genv config gpus <count>' first" % eid)
        failure = session.attach(owner, env, request_of(env["config"]))
        session.deliver_warnings(owner, env)
        script = Script()
        sync(script, env)
        payload = script.encode()
    emit(payload)
    if failure is not None:
        err(failure)
        return 1
    return 0
