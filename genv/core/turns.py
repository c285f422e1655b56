"""Taking turns on shared GPUs: the locks of ``genv lock`` and
``genv.sdk.lock()``.

Each GPU of the environment has a lock (``gpu_locks``); holding them all
(index order) is a turn. A lock held by an ancestor of this process (an
outer ``genv lock`` whose command started this one) already covers this
process: a nested lock passes at once for those GPUs instead of waiting for
its own parent forever.
"""

from __future__ import annotations

import os

from .. import gpu_locks
from ..errors import GenvError
from .session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Set

    from .context import Context

FOREVER = gpu_locks.FOREVER


def devices_of(ctx: Context, eid: str) -> List[Dict[str, Any]]:
    """The GPUs of environment ``eid``, from the state."""
    with Session(ctx, listing=True) as session:
        _, env = session.owned_env(eid)
        devices = [dict(device) for device in env["devices"]]
    if not devices:
        raise GenvError("environment %s has no GPUs attached: nothing to lock ('genv attach' first)" % eid)
    return devices


def ancestors() -> Set[int]:
    """This process's ancestors (their locks are this process's too)."""
    from ..attribution import lineage
    from ..procs import processes

    facts = processes()
    parent = facts.parent(os.getpid())
    found = {pid for pid in lineage(parent, facts) if pid > 1} if parent is not None else set()
    facts.close()
    return found


def hold(ctx: Context, eid: str, timeout: float = FOREVER) -> List[int]:
    """Take the lock of each GPU of ``eid`` (waiting at most ``timeout``
    seconds); the descriptors hold them (close them with ``release``)."""
    from ..store import StateDir

    return gpu_locks.hold(StateDir(), devices_of(ctx, eid), ctx.user, timeout, covered=ancestors(),
                          timer=not ctx.library)


release = gpu_locks.release
