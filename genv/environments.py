"""Environments: liveness, ownership, and handing out GPUs.

Pure functions over the state dictionaries that ``store.Transaction`` holds
(``users``: uid -> user state). No I/O here except through the
``Processes`` object passed in, so the logic is unit-testable.
"""

from __future__ import annotations

from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterable, List, Optional, Set, Tuple
    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]


MAX_TEXT = 256


def check_text(value: str, what: str) -> str:
    if value == "":
        raise GenvError("invalid %s: it must not be empty" % what)
    if len(value) > MAX_TEXT:
        raise GenvError("invalid %s: longer than %d characters" % (what, MAX_TEXT))
    return value


def prune(users: Users, processes: Any, holders_only: bool = False) -> Set[int]:
    """Drop terminals that are gone (PID gone, or reused by another process)
    and environments left without a terminal. Returns the uids changed.
    With ``holders_only``, only environments holding GPUs are checked (what
    a listing of GPUs needs); the others are left for a later command."""
    changed = set()
    for uid, state in users.items():
        keep = []
        for env in state["envs"]:
            if holders_only and not env["devices"]:
                keep.append(env)
                continue
            live = [t for t in env["terminals"] if processes.alive(t["pid"], t["token"])]
            if len(live) != len(env["terminals"]):
                env["terminals"] = live
                changed.add(uid)
            if live:
                keep.append(env)
        if len(keep) != len(state["envs"]):
            state["envs"] = keep
            changed.add(uid)
    return changed


def find(users: Users, eid: str) -> Optional[Tuple[int, Env]]:
    for uid in sorted(users):
        for env in users[uid]["envs"]:
            if env["id"] == eid:
                return uid, env
    return None


def check_owner(owner: int, euid: int, eid: str, describe: Any) -> None:
    if euid != 0 and euid != owner:
        raise GenvError(
            "environment %s belongs to %s; only its owner or root can use it" % (eid, describe(owner))
        )


def new_id(users: Users, pid: int) -> str:
    base = str(pid)
    candidate = base
    suffix = 1
    while find(users, candidate) is not None:
        suffix += 1
        candidate = "%s-%d" % (base, suffix)
    return candidate


def new_env(eid: str, now: float, config: Dict[str, Any], pid: int, token: str) -> Env:
    return {
        "id": eid,
        "created": now,
        "config": config,
        "terminals": [{"pid": pid, "token": token}],
        "devices": [],
        "warnings": [],
    }


def add_terminal(env: Env, pid: int, token: str) -> None:
    for terminal in env["terminals"]:
        if terminal["pid"] == pid:
            terminal["token"] = token
            return
    env["terminals"].append({"pid": pid, "token": token})


def remove_terminal(state: Dict[str, Any], env: Env, pid: int) -> bool:
    """Remove a terminal; the environment goes with its last one.
    Returns True if the environment was removed."""
    env["terminals"] = [t for t in env["terminals"] if t["pid"] != pid]
    if env["terminals"]:
        return False
    state["envs"] = [other for other in state["envs"] if other is not env]
    return True


def indices(env: Env) -> List[int]:
    return sorted(device["index"] for device in env["devices"])


# --- devices -----------------------------------------------------------------


def _same(reserved: Dict[str, Any], device: Dict[str, Any]) -> bool:
    if reserved.get("uuid") and device.get("uuid"):
        return bool(reserved["uuid"] == device["uuid"])
    return bool(reserved["index"] == device["index"])


def reconcile(state: Dict[str, Any], record: Dict[str, Any]) -> None:
    """Store a newly discovered device list in one user's state and keep that
    user's reservations on GPUs that still exist (matched by UUID when known,
    else by index). A reservation on a GPU that is gone is dropped, and its
    environment is told at its next command."""
    state["devices"] = record
    current = record["list"]
    for env in state["envs"]:
        kept = []
        for reserved in env["devices"]:
            match = next((device for device in current if _same(reserved, device)), None)
            label = "GPU %d%s" % (reserved["index"], " (%s)" % reserved["uuid"] if reserved.get("uuid") else "")
            if match is None:
                env["warnings"].append("%s is no longer on this machine; it was detached from this environment" % label)
                continue
            if match["index"] != reserved["index"]:
                env["warnings"].append(
                    "%s is now GPU %d; run 'genv attach' in each terminal to use the new index" % (label, match["index"])
                )
            kept.append({"index": match["index"], "uuid": match.get("uuid"), "attached": reserved["attached"]})
        env["devices"] = kept


def taken_by_others(users: Users, me: Optional[Env]) -> Tuple[Dict[str, Tuple[int, Env]], Dict[int, Tuple[int, Env]]]:
    """Reservations of every other environment: by UUID, and by index for
    reservations recorded without a UUID (mock GPUs)."""
    by_uuid: Dict[str, Tuple[int, Env]] = {}
    by_index: Dict[int, Tuple[int, Env]] = {}
    for uid in users:
        for env in users[uid]["envs"]:
            if env is me:
                continue
            for reserved in env["devices"]:
                if reserved.get("uuid"):
                    by_uuid[reserved["uuid"]] = (uid, env)
                by_index.setdefault(reserved["index"], (uid, env))
    return by_uuid, by_index


def holder(
    device: Dict[str, Any], taken: Tuple[Dict[str, Tuple[int, Env]], Dict[int, Tuple[int, Env]]]
) -> Optional[Tuple[int, Env]]:
    by_uuid, by_index = taken
    if device.get("uuid") and device["uuid"] in by_uuid:
        return by_uuid[device["uuid"]]
    found = by_index.get(device["index"])
    if found is None:
        return None
    # An index match counts unless both sides know UUIDs and they differ.
    for reserved in found[1]["devices"]:
        if reserved["index"] == device["index"]:
            if reserved.get("uuid") and device.get("uuid") and reserved["uuid"] != device["uuid"]:
                return None
    return found


def allocate(users: Users, env: Env, machine: Iterable[Dict[str, Any]], count: int, now: float) -> None:
    """Attach exactly ``count`` GPUs to ``env`` (keeping those it already has
    where possible), or raise GenvError and leave it with none."""
    machine = sorted(machine, key=lambda device: device["index"])
    if count > len(machine):
        env["devices"] = []
        raise GenvError(
            "cannot attach %d GPU%s: this machine has %d; the environment is now detached"
            % (count, "" if count == 1 else "s", len(machine))
        )
    taken = taken_by_others(users, env)
    mine = {(d.get("uuid") or "", d["index"]): d for d in env["devices"]}
    keep = []
    free = []
    for device in machine:
        key = (device.get("uuid") or "", device["index"])
        if holder(device, taken) is not None:
            continue
        if key in mine:
            keep.append({"index": device["index"], "uuid": device.get("uuid"), "attached": mine[key]["attached"]})
        else:
            free.append({"index": device["index"], "uuid": device.get("uuid"), "attached": now})
    if count > len(keep) + len(free):
        env["devices"] = []
        raise GenvError(
            "cannot attach %d GPU%s: only %d of this machine's %d %s free; the environment is now detached"
            % (count, "" if count == 1 else "s", len(keep) + len(free), len(machine),
               "is" if len(keep) + len(free) == 1 else "are")
        )
    chosen = keep[:count] + free[: max(0, count - len(keep))]
    env["devices"] = sorted(chosen, key=lambda device: device["index"])
