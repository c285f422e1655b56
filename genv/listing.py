"""The documents of the listings (``envs``, ``devices``, ``ps``, ``status``).

One builder per listing; the commands render them as a table, CSV or JSON,
and the SDK and the monitor use the same documents. The field names and
units are a stable interface, documented in docs/formats.md: memory in MiB
(whole numbers, rounded down), times in Unix seconds, ``null`` for unknown.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set

    from .attribution import Process

    Doc = Dict[str, Any]
    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]


def mib(value: Optional[int]) -> Optional[int]:
    return None if value is None else value >> 20


class Times:
    """What a listing needs to say how long an environment has been idle and
    when its reservation ends: the command's two clocks (``genv.clock``),
    root's record (``genv.sightings``)."""

    def __init__(self, wall: float, boot: float, seen: Optional[Dict[str, Any]] = None, boot_id: Optional[str] = None,
                 processes: Optional[Sequence[Process]] = None) -> None:
        self.wall, self.boot, self.seen, self.boot_id = wall, boot, seen, boot_id
        self.in_use: Optional[Set[int]] = None
        self._book: Optional[Dict[Any, Any]] = None  # root's records by environment, made at the first look
        if processes is not None:
            from .sightings import busy

            self.in_use = busy(processes)

    @classmethod
    def of(cls, session: Any) -> "Times":
        """The times of a session (and the processes it saw, if it asked)."""
        processes = session.attributed() if session.snapshot is not None else None
        return cls(session.now, session.boot, session.seen(), session.boot_id(), processes)

    def idle(self, uid: int, env: Env) -> Optional[float]:
        """Whole seconds since a genv command last saw one of the
        environment's own processes on its GPUs, or since it attached; None
        while in use (the last look saw one), holding nothing, or idle less
        than a minute (idle time is known to the minute). For people: what
        root saw, and what the owner's own commands wrote (decisions read
        root's record only)."""
        if not env["devices"]:
            return None
        from .clock import boot_from_wall
        from .sightings import RESOLUTION, find, idle_since, index

        if self.in_use is not None and id(env) in self.in_use:
            return None  # seen in use just now
        if self._book is None:
            self._book = index(self.seen, self.boot_id)
        record = find(self._book, uid, env)
        recent = 2 * RESOLUTION
        active = env.get("active")
        if env.get("busy") and active is not None and self.boot - active < recent:
            return None
        if record is not None and record["busy"] and record["active"] is not None \
                and self.boot - record["active"] < recent:
            return None
        if record is not None:
            since = idle_since(record)
        else:
            since = max(boot_from_wall(float(d["attached"]), self.wall, self.boot) for d in env["devices"])
        if active is not None:
            since = max(since, active)
        idle = self.boot - since
        return float(int(idle)) if idle >= RESOLUTION else None

    def until(self, env: Env) -> Optional[float]:
        """When the reservation ends (Unix time), None: no end. The session
        moved an earlier end the policy sets into ``until`` when it began
        (``environments.expire``)."""
        if not env["devices"] or env.get("until") is None:
            return None
        from .clock import wall_from_boot

        return wall_from_boot(env["until"], self.wall, self.boot)


def env_doc(uid: int, env: Env, user: Callable[[int], str], facts: Any, times: Optional[Times] = None) -> Doc:
    """One environment; ``facts`` (``procs``) says whether its waiter is
    stopped, ``times`` how long it has been idle and when it ends."""
    from .environments import indices

    config = env["config"]
    return {
        "id": env["id"],
        "uid": uid,
        "user": user(uid),
        "name": config.get("name"),
        "gpus": config.get("gpus"),
        "gpu_memory": mib(config.get("gpu_memory")),
        "created": env["created"],
        "pids": [terminal["pid"] for terminal in env["terminals"]],
        "devices": indices(env),
        "waiting": waiting_doc(env.get("waiting"), facts),
        "idle_seconds": times.idle(uid, env) if times is not None else None,
        "until": times.until(env) if times is not None else None,
    }


def waiting_doc(waiting: Optional[Dict[str, Any]], facts: Any) -> Optional[Doc]:
    """An environment's place in the line of ``attach --wait``, or None;
    ``stopped``: its waiting process is stopped (Ctrl-Z), and holds up
    nobody until it runs again."""
    if not waiting:
        return None
    return {"since": waiting["since"], "pid": waiting["pid"], "count": waiting["count"],
            "memory": mib(waiting["memory"]), "indices": waiting["indices"],
            "stopped": facts.state(waiting["pid"]) in ("T", "t")}


def process_doc(process: Process, user: Callable[[int], str]) -> Doc:
    env = process.env
    return {
        "gpu": process.gpu,
        "pid": process.pid,
        "uid": process.uid,
        "user": user(process.uid) if process.uid is not None else None,
        "env_id": env["id"] if env is not None else None,
        "env_name": env["config"].get("name") if env is not None else None,
        "memory": mib(process.memory),
        "command": process.command,
        "managed": process.managed,
        "misplaced": process.misplaced,
    }


def envs_docs(users: Users, user: Callable[[int], str], facts: Any, times: Optional[Times] = None) -> List[Doc]:
    rows = [(uid, env) for uid in sorted(users) for env in users[uid]["envs"]]
    rows.sort(key=lambda row: (row[1]["created"], row[1]["id"]))
    return [env_doc(uid, env, user, facts, times) for uid, env in rows]


def devices_docs(users: Users, machine: Sequence[Dict[str, Any]], used: Dict[int, Optional[int]],
                 processes: Sequence[Process], user: Callable[[int], str]) -> List[Doc]:
    from .environments import holdings

    held = holdings(users, machine)
    docs = []
    for device in machine:
        index = device["index"]
        total = device.get("total")
        holders = held[index]
        whole = any(reserved.get("memory") is None for _, _, reserved in holders)
        shares = sum(reserved.get("memory") or 0 for _, _, reserved in holders)
        if whole:
            available: Optional[int] = 0
        elif total is None:
            available = None
        else:
            available = max(0, total - shares)
        docs.append({
            "index": index,
            "uuid": device.get("uuid"),
            "name": device.get("name"),
            "memory_total": mib(total),
            "memory_used": mib(used.get(index)),
            "memory_available": mib(available),
            "environments": [
                {"id": env["id"], "name": env["config"].get("name"), "uid": uid, "user": user(uid),
                 "memory": mib(reserved.get("memory")), "attached": reserved["attached"]}
                for uid, env, reserved in holders
            ],
            "processes": [process_doc(p, user) for p in processes if p.gpu == index],
        })
    return docs


def ps_docs(processes: Sequence[Process], user: Callable[[int], str]) -> List[Doc]:
    ordered = sorted(processes, key=lambda p: (p.gpu if p.gpu is not None else 1 << 30, p.pid))
    return [process_doc(process, user) for process in ordered]


def status_doc(uid: int, env: Env, processes: Sequence[Process], user: Callable[[int], str], facts: Any,
               times: Optional[Times] = None) -> Doc:
    doc = env_doc(uid, env, user, facts, times)
    doc["active"] = True
    doc["processes"] = [process_doc(p, user) for p in processes if p.env is env]
    return doc
