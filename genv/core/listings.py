"""The listings every front end shows: ``envs``, ``devices``, ``ps`` and
``status``, and the monitor's reading of the first three.

Each function is the one recipe of its listing: the session it needs (which
environments are checked, whether nvidia-smi is asked for processes and
memory in use) and the documents of ``genv.listing`` built from it. The
commands render the documents (table, CSV, JSON) and the SDK returns them.
The time the state was read at (``now``, wall clock) comes with them, for
rendering "7 minutes ago".
"""

from __future__ import annotations

from ..listing import Times, devices_docs, envs_docs, ps_docs, status_doc
from .session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

    from .context import Context

    Doc = Dict[str, Any]


def envs(ctx: Context) -> Tuple[List[Doc], float]:
    """The documents of ``genv envs``, and when they were read."""
    with Session(ctx, listing=True) as session:
        docs = envs_docs(session.users, ctx.user, session.processes, Times.of(session))
    return docs, session.now


def devices(ctx: Context) -> Tuple[List[Doc], float]:
    """The documents of ``genv devices``, and when they were read."""
    # Only environments that hold a GPU matter here: checking the liveness
    # of every other one would make the listing grow with their number.
    with Session(ctx, holders_only=True, listing=True, observe=True, usage=True, details=True) as session:
        assert session.snapshot is not None
        docs = devices_docs(session.holders, session.machine, session.snapshot.used, session.attributed(), ctx.user)
    return docs, session.now


def ps(ctx: Context) -> Tuple[List[Doc], float]:
    """The documents of ``genv ps``, and when they were read."""
    with Session(ctx, holders_only=True, listing=True, observe=True, details=True) as session:
        docs = ps_docs(session.attributed(), ctx.user)
    return docs, session.now


def reading(ctx: Context) -> Tuple[List[Doc], List[Doc], List[Doc]]:
    """The documents of ``genv envs``, ``genv devices`` and ``genv ps`` from
    one session (one nvidia-smi query of each kind): a monitor's reading."""
    with Session(ctx, listing=True, observe=True, usage=True, details=True) as session:
        assert session.snapshot is not None
        processes = session.attributed()
        envs = envs_docs(session.users, ctx.user, session.processes, Times.of(session))
        devices = devices_docs(session.holders, session.machine, session.snapshot.used, processes, ctx.user)
        procs = ps_docs(processes, ctx.user)
    return envs, devices, procs


def status(ctx: Context, deliver: bool) -> Optional[Tuple[Doc, float, List[str]]]:
    """The document of ``genv status`` for the caller's environment, when it
    was read, and the messages for the caller; None outside an environment.
    With ``deliver``, the messages left for the environment (a GPU that
    disappeared) are among the messages, and taken from the state (once)."""
    if ctx.eid is None:
        return None
    with Session(ctx, listing=True, observe=True, details=True) as session:
        owner, env = session.env(ctx.eid)
        if deliver:
            session.deliver_warnings(owner, env)
        doc = status_doc(owner, env, session.attributed(), ctx.user, session.processes, Times.of(session))
    return doc, session.now, session.messages
