"""The documents of the listings (``envs``, ``devices``, ``ps``, ``status``).

One builder per listing; the commands render them as a table, CSV or JSON,
and the SDK and the monitor use the same documents. The field names and
units are a stable interface, documented in docs/formats.md: memory in MiB
(whole numbers, rounded down), times in Unix seconds, ``null`` for unknown.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence

    from .attribution import Process

    Doc = Dict[str, Any]
    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]


def mib(value: Optional[int]) -> Optional[int]:
    return None if value is None else value >> 20


def env_doc(uid: int, env: Env, user: Callable[[int], str], facts: Any) -> Doc:
    """One environment; ``facts`` (``procs``) says whether its waiter is stopped."""
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


def envs_docs(users: Users, user: Callable[[int], str], facts: Any) -> List[Doc]:
    rows = [(uid, env) for uid in sorted(users) for env in users[uid]["envs"]]
    rows.sort(key=lambda row: (row[1]["created"], row[1]["id"]))
    return [env_doc(uid, env, user, facts) for uid, env in rows]


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


def status_doc(uid: int, env: Env, processes: Sequence[Process], user: Callable[[int], str], facts: Any) -> Doc:
    doc = env_doc(uid, env, user, facts)
    doc["active"] = True
    doc["processes"] = [process_doc(p, user) for p in processes if p.env is env]
    return doc
