"""The frame of a command that reads or changes state."""

from __future__ import annotations

import os
import time


from .. import devices, envs
from ..cli import Context, err
from ..errors import GenvError
from ..procs import Processes
from ..store import StateDir, Transaction

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple


class Session:
    """Discover devices (if needed) *before* the lock, then, inside
    ``with``: hold the lock, drop dead terminals, store a new device list."""

    def __init__(self, ctx: Context, need_devices: bool = False, holders_only: bool = False) -> None:
        self.ctx = ctx
        self.holders_only = holders_only
        self.now = time.time()
        self.folder = StateDir()
        self.processes = Processes()
        self.record: Optional[Dict[str, Any]] = None
        self._store_record = False
        if need_devices:
            self.discover()

    def discover(self) -> None:
        cached = (self.folder.peek(self.ctx.euid) or {}).get("devices")
        self.record, self._store_record = devices.discover(cached, self.now)

    @property
    def machine(self) -> List[Dict[str, Any]]:
        if self.record is None:
            raise GenvError("internal: devices were not discovered")
        return self.record["list"]  # type: ignore[no-any-return]

    def __enter__(self) -> "Session":
        self.tx: Transaction = self.folder.transaction().__enter__()
        try:
            euid = self.ctx.euid
            if euid in envs.prune(self.tx.users, self.processes, self.holders_only):
                self.tx.changed(euid)
            if self._store_record and self.record is not None:
                envs.reconcile(self.tx.user(euid), self.record)
                self.tx.changed(euid)
        except BaseException as error:
            self.tx.__exit__(type(error), error, None)
            raise
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.tx.__exit__(kind, value, traceback)

    @property
    def users(self) -> Dict[int, Dict[str, Any]]:
        return self.tx.users

    def env(self, eid: str) -> Tuple[int, Dict[str, Any]]:
        found = envs.find(self.tx.users, eid)
        if found is None:
            raise GenvError(
                "environment %s no longer exists (this shell still carries its id); "
                "run 'genv deactivate', then 'genv activate'" % eid
            )
        return found

    def owned_env(self, eid: str) -> Tuple[int, Dict[str, Any]]:
        owner, env = self.env(eid)
        envs.check_owner(owner, self.ctx.euid, eid, self.ctx.describe)
        return owner, env

    def deliver_warnings(self, owner: int, env: Dict[str, Any]) -> None:
        """Messages left for this environment (a GPU that disappeared)."""
        if env["warnings"] and self.ctx.euid in (0, owner):
            for warning in env["warnings"]:
                err(warning)
            env["warnings"] = []
            self.tx.changed(owner)


def shims(ctx: Context) -> str:
    return os.path.join(ctx.root, "shims")
