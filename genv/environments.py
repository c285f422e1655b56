"""Environment records: liveness, ownership, terminals, GPUs that moved.

Pure functions over the state dictionaries that ``store.Transaction`` holds
(``users``: uid -> user state). No I/O here except through the process
facts object passed in, so the logic is unit-testable. Which GPUs an
environment gets is decided in ``allocate``.
"""

from __future__ import annotations

from .errors import GenvError
from .limits import MAX_NOTE, MAX_TEXT
from .text import encodable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]


def check_text(value: str, what: str) -> str:
    """A name or an id given by a user: not empty, not too long, and
    printable to a shell (no lone surrogates)."""
    if value == "":
        raise GenvError("invalid %s: it must not be empty" % what)
    if len(value) > MAX_TEXT:
        raise GenvError("invalid %s: longer than %d characters" % (what, MAX_TEXT))
    if not encodable(value):
        raise GenvError("invalid %s: it holds characters that cannot be written out" % what)
    return value


def prune(users: Users, processes: Any, holders_only: bool = False) -> Set[int]:
    """Drop terminals that are gone (PID gone, or reused by another process)
    and environments left without a terminal. Returns the uids changed.
    A place in line whose waiting process is gone is dropped too. With
    ``holders_only``, only environments holding GPUs or waiting for them are
    checked (what a listing of GPUs needs); the others are left for later."""
    changed = set()
    for uid, state in users.items():
        keep = []
        for env in state["envs"]:
            if holders_only and not env["devices"] and not env.get("waiting"):
                keep.append(env)
                continue
            live = [t for t in env["terminals"] if processes.alive(t["pid"], t["token"])]
            if len(live) != len(env["terminals"]):
                env["terminals"] = live
                changed.add(uid)
            waiting = env.get("waiting")
            if waiting is not None and not waiter_ok(waiting, uid, processes):
                env["waiting"] = None  # a waiter killed with kill -9 leaves the line
                changed.add(uid)
            if live:
                keep.append(env)
        if len(keep) != len(state["envs"]):
            state["envs"] = keep
            changed.add(uid)
        joins = state.get("joins")
        if joins:
            live_joins = [j for j in joins if processes.alive(j["pid"], j["token"])]
            if len(live_joins) != len(joins):
                state["joins"] = live_joins
                changed.add(uid)
    return changed


WAITING_NAME = "genv-waiting"
"""The name (``/proc/<pid>/comm``) a process has while it waits in line in
genv's code (``core.waitline``): anyone can read it, as the kernel keeps it."""

WAITING = "waiting"
STOPPED = "stopped"
"""What ``places`` says of a real waiter's place: its process waits (the
place counts), or is stopped (Ctrl-Z: it counts again once continued)."""


def waiter_ok(waiting: Dict[str, Any], uid: int, processes: Any) -> bool:
    """A place in line is kept while its waiting process lives and belongs
    to the environment's owner: a user who writes somebody else's process
    (say init) into their own file holds no place. (Whether a kept place
    counts: ``places``.)"""
    return bool(processes.alive(waiting["pid"], waiting["token"]) and processes.uid(waiting["pid"]) == uid)


def arrival(waiting: Dict[str, Any], processes: Any, now: Optional[float] = None) -> float:
    """When a (live, checked) waiter joined the line, on the process clock
    (``processes.clock()``: seconds since boot, which a wall-clock step does
    not move): ``arrived`` as its owner's file says (older records: ``since``,
    converted), but never before its waiting process started, so that a user
    who edits their own file cannot move ahead of anyone who joined after
    that process started, and never after ``now`` (default: the clock now),
    so that a time in the future puts a place last, not beyond reach."""
    if now is None:
        now = processes.clock()
    arrived = waiting.get("arrived")
    if arrived is None:
        from .clock import boot_from_wall, wall

        arrived = boot_from_wall(float(waiting["since"]), wall(), now)
    arrived = min(float(arrived), now)
    started = processes.started(waiting["pid"])
    return started if started is not None and arrived < started else arrived


def live_view(users: Users, processes: Any) -> Users:
    """What ``prune`` would leave, without changing ``users``: shallow copies,
    for readers that keep parsed files between looks."""
    view: Users = {}
    for uid, state in users.items():
        kept = []
        for env in state["envs"]:
            if not any(processes.alive(t["pid"], t["token"]) for t in env["terminals"]):
                continue
            waiting = env.get("waiting")
            if waiting is not None and not waiter_ok(waiting, uid, processes):
                env = {**env, "waiting": None}
            kept.append(env)
        view[uid] = {**state, "envs": kept}
    return view


def find(users: Users, eid: str, caller: Optional[int] = None) -> Optional[Tuple[int, Env]]:
    """The environment ``eid`` and its owner. genv makes every id unique,
    but any user can write another user's id into their own file: the
    ``caller``'s own environment of that id comes first, then (for root)
    one that root's record of its joins names, then the lowest uid's. So a
    copied id can take nothing from anyone but root, who must tell them
    apart (``claimants``)."""
    found = [(uid, env) for uid in sorted(users) for env in users[uid]["envs"] if env["id"] == eid]
    if len(found) > 1 and caller is not None:
        own = [item for item in found if item[0] == caller]
        if own:
            return own[0]
        if caller == 0:
            joined = {join["uid"] for join in users.get(0, {}).get("joins", ()) if join["env"] == eid}
            named = [item for item in found if item[0] in joined]
            if len(named) == 1:
                return named[0]
    return found[0] if found else None


def mine(users: Users, eid: str, caller: int) -> Optional[Tuple[int, Env]]:
    """The environment ``eid`` and its owner, if ``caller`` may act as one
    of its terminals (its own; root: any). None otherwise: an id another
    user wrote into their own file is never the caller's."""
    found = find(users, eid, caller)
    return found if found is not None and caller in (0, found[0]) else None


def claimants(users: Users, eid: str) -> List[int]:
    """The users whose files hold an environment ``eid`` (more than one:
    somebody copied another's id into their own file)."""
    return [uid for uid in sorted(users) if any(env["id"] == eid for env in users[uid]["envs"])]


def check_owner(owner: int, euid: int, eid: str, describe: Callable[[int], str]) -> None:
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


def record_join(users: Users, owner: int, env: Env, pid: int, token: str) -> None:
    """Root joined another user's environment: say so in root's own state,
    which only root can write. Without it, a root process listed as a
    terminal in a user's file is not taken for one (the user could have
    written it there to claim root's processes)."""
    joins = users[0].setdefault("joins", [])
    record = {"uid": owner, "env": env["id"], "pid": pid, "token": token}
    if record not in joins:
        joins.append(record)


def forget_join(users: Users, owner: int, env: Env, pid: int) -> bool:
    """Undo ``record_join`` (root's terminal left); True if one was removed."""
    joins = users.get(0, {}).get("joins", [])
    kept = [j for j in joins if not (j["uid"] == owner and j["env"] == env["id"] and j["pid"] == pid)]
    if len(kept) == len(joins):
        return False
    users[0]["joins"] = kept
    return True


def remove_terminal(state: Dict[str, Any], env: Env, pid: int) -> bool:
    """Remove a terminal; the environment goes with its last one.
    Returns True if the environment was removed."""
    env["terminals"] = [t for t in env["terminals"] if t["pid"] != pid]
    if env["terminals"]:
        return False
    state["envs"] = [other for other in state["envs"] if other is not env]
    return True


def indices(env: Env) -> List[int]:
    """The environment's GPUs, as nvidia-smi indices, in order."""
    return sorted(device["index"] for device in env["devices"])


def holdings(users: Users, machine: Sequence[Dict[str, Any]],
             exclude: Optional[Env] = None) -> Dict[int, List[Tuple[int, Env, Dict[str, Any]]]]:
    """Who holds each GPU of the machine: index -> [(uid, env, reservation)].
    A reservation is on a GPU by UUID when both sides know UUIDs, else by
    index; one on a GPU that is not on the machine is on none."""
    device_of = locate(machine)
    result: Dict[int, List[Tuple[int, Env, Dict[str, Any]]]] = {device["index"]: [] for device in machine}
    for uid in sorted(users):
        for env in users[uid]["envs"]:
            if env is exclude:
                continue
            for reserved in env["devices"]:
                device = device_of(reserved)
                if device is not None:
                    result[device["index"]].append((uid, env, reserved))
    return result


def locate(machine: Sequence[Dict[str, Any]]) -> Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """The GPU of the machine a reservation is on (None: none of them): by
    UUID when both sides know UUIDs, else by index (a UUID that names
    another GPU than the index's: none)."""
    by_index = {device["index"]: device for device in machine}
    by_uuid = {device["uuid"]: device for device in machine if device.get("uuid")}

    def device_of(reserved: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        uuid = reserved.get("uuid")
        if uuid and by_uuid:
            return by_uuid.get(uuid)
        device = by_index.get(reserved["index"])
        if device is not None and uuid and device.get("uuid") and device["uuid"] != uuid:
            return None
        return device

    return device_of


def places(users: Users, processes: Any,
           judge: Optional[Callable[[int, Env], Optional[str]]] = None) -> List[Tuple[int, Env, str]]:
    """Every place in line, whether it counts and why not: (uid, env,
    ``WAITING``, ``STOPPED`` or why it does not count). ``users`` already
    pruned (every place's process lives and is its owner's). A place counts
    only as a real waiter would: while the kernel says its process runs
    genv's waiting code (named ``WAITING_NAME``, which genv's waiter takes
    while it waits and gives back after) and no other place names the same
    process; ``STOPPED`` while that process is stopped (Ctrl-Z: it holds up
    nobody until it runs again). ``judge`` (uid, env -> why not, or None)
    says whether the request is one that joining the line would have let
    wait: within the owner's caps and what the machine has."""
    found = [(uid, env) for uid in sorted(users) for env in users[uid]["envs"] if env.get("waiting")]
    pids: Dict[int, int] = {}
    for _, env in found:
        pid = env["waiting"]["pid"]
        pids[pid] = pids.get(pid, 0) + 1
    result = []
    for uid, env in found:
        pid = env["waiting"]["pid"]
        why: Optional[str] = None
        if processes.names and processes.name(pid) != WAITING_NAME:
            why = "its process (pid %d) is not waiting in genv" % pid
        elif pids[pid] > 1:
            why = "its process (pid %d) is named by another place in line too" % pid
        elif judge is not None:
            why = judge(uid, env)
        if why is None:
            why = STOPPED if processes.state(pid) in ("T", "t") else WAITING
        result.append((uid, env, why))
    return result


def line(users: Users, processes: Any, judge: Optional[Callable[[int, Env], Optional[str]]] = None,
         placed: Optional[List[Tuple[int, Env, str]]] = None) -> List[Tuple[int, Env]]:
    """The environments waiting for GPUs (``attach --wait``) whose places
    count now (``places``: stopped ones do not), first come first: by when
    they joined the line (``arrival``; joined under the lock, so in order),
    then by facts no user chooses: when the waiting process started, its
    PID. ``users`` already pruned (every waiter checked); ``placed``: what
    ``places`` gave for them, if the caller has it."""
    now = processes.clock()
    waiting = []
    for uid, env, why in places(users, processes, judge) if placed is None else placed:
        if why == WAITING:
            pid = env["waiting"]["pid"]
            started = processes.started(pid)
            waiting.append((arrival(env["waiting"], processes, now), started if started is not None else now, pid,
                            uid, env))
    waiting.sort(key=lambda item: item[:3])
    return [(uid, env) for _, _, _, uid, env in waiting]


def ahead_of(users: Users, env: Env, processes: Any, judge: Optional[Callable[[int, Env], Optional[str]]] = None,
             placed: Optional[List[Tuple[int, Env, str]]] = None) -> List[Tuple[int, Env]]:
    """The requests in line before ``env``'s: all of them for a request that
    is not in line (it came later than every one that is)."""
    queue = line(users, processes, judge, placed)
    for position, (_, other) in enumerate(queue):
        if other is env:
            return queue[:position]
    return queue


def reconcile(state: Dict[str, Any], record: Dict[str, Any]) -> None:
    """Store a newly discovered device list in one user's state and keep that
    user's reservations on GPUs that still exist (matched by UUID when known,
    else by index). A reservation on a GPU that is gone is dropped, and its
    environment is told at its next command."""
    state["devices"] = record
    device_of = locate(record["list"])
    for env in state["envs"]:
        kept = []
        for reserved in env["devices"]:
            match = device_of(reserved)
            label = "GPU %d%s" % (reserved["index"], " (%s)" % reserved["uuid"] if reserved.get("uuid") else "")
            if match is None:
                env["warnings"].append("%s is no longer on this machine; it was detached from this environment" % label)
                continue
            if match["index"] != reserved["index"]:
                env["warnings"].append(
                    "%s is now GPU %d; run 'genv attach' in each terminal to use the new index" % (label, match["index"])
                )
            kept.append({**reserved, "index": match["index"], "uuid": match.get("uuid")})
        env["devices"] = kept


# --- what an environment's terminals follow, and what they are told --------------

NOTES_KEPT = 8
"""Notes an environment keeps for its terminals (the latest)."""


def terminal_view(env: Env) -> Tuple[Any, ...]:
    """What the terminals of an environment follow: its GPUs and shares, its
    end, its latest note. (A change makes the shell look again.)"""
    devices = tuple(sorted((d["index"], d.get("memory")) for d in env["devices"]))
    return devices, env.get("until"), last_note(env)


def last_note(env: Env) -> int:
    notes = env.get("notes") or ()
    return int(notes[-1]["id"]) if notes else 0


def add_note(env: Env, text: str) -> None:
    """A message for each of the environment's terminals, told once to each
    (at its next genv command or prompt)."""
    notes = list(env.get("notes") or ())
    number = last_note(env) + 1
    if number >= MAX_NOTE:  # only a number written by hand comes this far: count again
        notes, number = [], 1
    notes.append({"id": number, "text": text})
    env["notes"] = notes[-NOTES_KEPT:]


def notes_after(env: Env, seen: int) -> List[str]:
    """The notes a terminal that was told up to note ``seen`` has not seen."""
    return [note["text"] for note in env.get("notes") or () if note["id"] > seen]


def gpu_words(env: Env) -> str:
    """``GPU 3`` or ``GPUs 0,1``, for messages."""
    held = indices(env)
    return "GPU%s %s" % ("" if len(held) == 1 else "s", ",".join(map(str, held)))


def hold(env: Env, devices: List[Dict[str, Any]]) -> bool:
    """Give the environment these reservations (with none, its end goes
    too: no GPUs, nothing to end); whether that changed it."""
    changed = devices != env["devices"] or (not devices and env.get("until") is not None)
    env["devices"] = devices
    if not devices:
        env.pop("until", None)
    return changed


def release(env: Env, why: str) -> None:
    """Detach the environment, its terminals to be told ``GPUs 0,1 were
    released WHY`` (a reclaim, a reservation that ended)."""
    if env["devices"]:
        add_note(env, "%s %s released %s" % (gpu_words(env), "was" if len(env["devices"]) == 1 else "were", why))
    hold(env, [])


def expire(users: Users, boot: float, ends: Dict[Tuple[int, str], Tuple[float, str]]) -> Set[int]:
    """Release the GPUs of every environment whose reservation ended by
    ``boot`` (the boot clock): its own ``until``, or an earlier end in
    ``ends`` ((uid, id) -> (end, why): the policy's limit counted from what
    root saw). An earlier end still to come becomes the environment's
    ``until``, so that its terminals, which compare only that with the
    clock at each prompt, follow it (the owner's file never wrote it: a
    policy written or lowered after the attach, or an end removed by hand).
    Returns the uids changed."""
    changed = set()
    for uid, state in users.items():
        for env in state["envs"]:
            if not env["devices"]:
                continue
            until = env.get("until")
            end, why = (until, "at the end of its reservation") if until is not None else (None, "")
            other = ends.get((uid, env["id"]))
            if other is not None and (end is None or other[0] < end):
                end, why = other
            if end is not None and end <= boot:
                release(env, why)
                changed.add(uid)
            elif end is not None and end != until:
                env["until"] = end
                changed.add(uid)
    return changed
