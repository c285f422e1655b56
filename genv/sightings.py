"""What root-run genv commands saw: the evidence for decisions against users.

Every value in a user's state file is that user's claim: they can write
anything there. A decision against another user (``genv enforce`` stopping
a process over a conflict, reclaiming GPUs idle too long, ending a
reservation at the policy's limit) therefore rests only on what users
cannot write: the kernel (processes, their owners and start times), the
admin's policy, and this record, which root-run genv commands keep in
root's own state file (``"seen"``; only root can write it, and readers trust
a state file only if the uid in its name owns it).

Each root-run command that reads the state (``genv enforce``, a listing,
an attach, the monitor when it runs as root) updates it under the lock,
for every environment that holds GPUs:

- **claims**: each reservation (GPU, whole or a share) and when a root-run
  command first saw it (``first``). A claim that root no longer sees is
  forgotten, so ``first`` is the first of root's looks since which the
  claim was there at every look.
- **since**: when the environment attached, for its idle time: at the first
  sighting of each claim, the owner's own ``attached`` time counts, but
  never later than that sighting; afterwards, editing one's own file moves
  nothing.
- **active** and **busy**: the last time a root-run command saw one of the
  environment's own processes (its owner's, attributed by
  ``genv.attribution``, which refuses users' claims on others' processes)
  on one of its GPUs, to the minute (``RESOLUTION``), and whether the last
  look saw one.
- **until**: the reservation end the owner's file gave, and when root first
  saw that value (``max_reservation`` counts from then).

Times are on the boot clock (``genv.clock.boot``), and the record holds the
boot it was taken in: a record of another boot is dropped whole.

The record is bounded, since users write what it is made of: an
environment's claim is recorded once (a GPU written twice is one claim),
claims on GPUs the machine does not have are not recorded when the command
knows the machine's GPUs, and each user's environments take at most
``limits.MAX_RECORD`` bytes of it: those root recorded before keep their
place, then the others in the order of the owner's file, while they fit.
An environment left out has no record, as one root never saw: nothing is
decided against anyone on its account (``conflicts``: its claim is not
ordered; not judged idle; no ``max_reservation`` end), and ``over``
names its owner, for ``genv enforce`` to tell an admin.

``update`` is pure; ``Session.witness`` applies it. ``first_seen``,
``idle_since`` and ``end`` are what decisions read.
"""

from __future__ import annotations

from .limits import MAX_RECORD

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Set, Tuple

    from .attribution import Process

    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]
    Record = Dict[str, Any]

RESOLUTION = 60.0
"""Seconds: a sighting of an environment's process is recorded again only
this long after the last one (idle times are known to the minute), so that
a look that changes nothing writes nothing."""


def claim_key(reserved: Dict[str, Any]) -> Any:
    """What identifies a reservation's GPU: its UUID, else its index."""
    return reserved.get("uuid") or reserved["index"]


def busy(processes: Sequence[Process]) -> Set[int]:
    """The environments (``id(env)``) one of whose own processes (its
    owner's: another user's never makes it look busy) runs on one of its
    GPUs: one pass over the processes."""
    return {id(process.env) for process in processes
            if process.env is not None and process.known and not process.misplaced and process.gpu is not None
            and process.uid is not None and process.uid == process.owner}


def _attached(reserved: Dict[str, Any], wall: float, boot: float) -> float:
    """The owner's attach time on the boot clock (a claim: never in the
    future, nor before the boot)."""
    from .clock import boot_from_wall

    return max(0.0, min(boot, boot_from_wall(float(reserved["attached"]), wall, boot)))


ENV_BYTES = 200
"""Bytes an environment's record takes in root's file at most, but for its
id and its claims (uid, times, flags, keys: the compact ASCII-only JSON
``genv.jsonio`` writes)."""

CLAIM_BYTES = 64
"""Bytes a claim takes at most, but for a GPU named by its UUID."""


def _text_bytes(text: str) -> int:
    """Bytes a string takes in the file at most (ASCII-only JSON: up to 12
    a character, an astral one written as two ``\\uXXXX``)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return 12 * len(text) + 2


def _recorded(uid: int, envs: Sequence[Env], device_of: Optional[Callable[[Dict[str, Any]], Any]],
              old: Dict[Tuple[int, str], Record]) -> Tuple[List[Tuple[Env, List[Tuple[Any, Dict[str, Any]]]]], bool]:
    """The environments of user ``uid`` that hold GPUs and have a place in
    the record, each with its claims that count ([(key, reservation)]: each
    (GPU, whole) once, on a GPU of the machine when ``device_of`` knows
    them), in the order of the file, and whether some were left out (over
    ``MAX_RECORD``): the ones recorded before first, then the others in
    order, while they fit."""
    entries = []
    rough = 0  # at most 12 bytes a character: exact only when it matters
    for env in envs:
        if not env["devices"]:
            continue
        claims = []
        keys = set()
        size = ENV_BYTES + 12 * len(env["id"]) + 2
        for reserved in env["devices"]:
            gpu = reserved.get("uuid") or reserved["index"]  # claim_key
            key = (gpu, reserved.get("memory") is None)
            if key in keys or (device_of is not None and device_of(reserved) is None):
                continue
            keys.add(key)
            claims.append((key, reserved))
            size += CLAIM_BYTES + 12 * len(gpu) + 2 if type(gpu) is str else CLAIM_BYTES
        if claims:
            entries.append((env, claims))
            rough += size
    if rough <= MAX_RECORD:
        return entries, False
    sizes = [ENV_BYTES + _text_bytes(env["id"]) + sum(
        CLAIM_BYTES + _text_bytes(key[0]) if type(key[0]) is str else CLAIM_BYTES for key, _ in claims)
        for env, claims in entries]
    if sum(sizes) <= MAX_RECORD:
        return entries, False
    ranked = sorted(range(len(entries)), key=lambda at: ((uid, entries[at][0]["id"]) not in old, at))
    kept = set()
    spent = 0
    for at in ranked:
        if spent + sizes[at] <= MAX_RECORD:
            kept.add(at)
            spent += sizes[at]
    return [entry for at, entry in enumerate(entries) if at in kept], True


def over(users: Users, machine: Optional[Sequence[Dict[str, Any]]] = None) -> List[int]:
    """The users some of whose environments holding GPUs root's record
    leaves out (``MAX_RECORD``): what ``update`` with the same ``machine``
    records is not all they claim."""
    device_of = _locator(machine)
    return [uid for uid in sorted(users) if _recorded(uid, users[uid]["envs"], device_of, {})[1]]


def _locator(machine: Optional[Sequence[Dict[str, Any]]]) -> Optional[Callable[[Dict[str, Any]], Any]]:
    if machine is None:
        return None
    from .environments import locate

    return locate(machine)


def update(seen: Optional[Dict[str, Any]], users: Users, boot_id: str, wall: float, boot: float,
           processes: Optional[Sequence[Process]], machine: Optional[Sequence[Dict[str, Any]]] = None
           ) -> Dict[str, Any]:
    """Root's record after a look at ``users`` (and, when the command asked
    nvidia-smi, at the attributed ``processes``; with ``machine``, the
    command's GPUs, claims on others are not recorded). Pure: a new record,
    within ``MAX_RECORD`` bytes per user."""
    old = index(seen, boot_id)
    records = []
    in_use = busy(processes) if processes is not None else set()
    device_of = _locator(machine)
    for uid in sorted(users):
        for env, found in _recorded(uid, users[uid]["envs"], device_of, old)[0]:
            before = old.get((uid, env["id"]))
            known = {(claim["gpu"], claim["whole"]): claim["first"] for claim in before["claims"]} if before else {}
            since = before["since"] if before else None
            claims = []
            for key, reserved in found:
                first = known.get(key)
                if first is None:
                    first = boot
                    attached = _attached(reserved, wall, boot)
                    since = attached if since is None else max(since, attached)
                claims.append({"gpu": key[0], "whole": key[1], "first": first})
            assert since is not None
            value = env.get("until")
            until = before["until"] if before and before["until"]["value"] == value else {"value": value, "first": boot}
            active = before["active"] if before else None
            used = before["busy"] if before else False
            if processes is not None:
                used = id(env) in in_use
                active = active_after(active, bool(before and before["busy"]), used, boot)
            records.append({"uid": uid, "env": env["id"], "claims": claims, "since": since, "active": active,
                            "busy": used, "until": until})
    return {"boot": boot_id, "envs": records}


def active_after(active: Optional[float], was_busy: bool, busy: bool, boot: float) -> Optional[float]:
    """When an environment was last seen in use, after a look at ``boot``
    that saw it ``busy``: a new time only where it was not in use before or
    the last time is ``RESOLUTION`` old (so that a look does not rewrite a
    file each time)."""
    if busy and (active is None or boot - active >= RESOLUTION or not was_busy):
        return boot
    return active


def index(seen: Optional[Dict[str, Any]], boot_id: Optional[str]) -> Dict[Tuple[int, str], Record]:
    """Root's records by (uid, environment id), for ``find``: made once per
    command, as a user may have very many environments (each looked up)."""
    if not seen or seen.get("boot") != boot_id:
        return {}
    return {(record["uid"], record["env"]): record for record in seen["envs"]}


def find(book: Dict[Tuple[int, str], Record], uid: int, env: Env) -> Optional[Record]:
    """Root's record of an environment (None: root never saw it hold GPUs,
    or not in this boot); ``book``: from ``index``."""
    return book.get((uid, env["id"]))


def first_seen(record: Optional[Record], reserved: Dict[str, Any]) -> Optional[float]:
    """When a root-run command first saw this very claim (None: never)."""
    if record is None:
        return None
    key = claim_key(reserved)
    whole = reserved.get("memory") is None
    for claim in record["claims"]:
        if claim["gpu"] == key and claim["whole"] == whole:
            return float(claim["first"])
    return None


def idle_since(record: Record) -> float:
    """Since when root has seen none of the environment's processes on its
    GPUs: its last sighting of one, or its attach (boot clock)."""
    active = record.get("active")
    return float(record["since"] if active is None else max(record["since"], active))


def end(record: Optional[Record], limit: Optional[float], until: Optional[float], boot: float) -> Optional[float]:
    """The latest end root allows a reservation whose owner's file says
    ``until`` now, under ``max_reservation`` = ``limit`` seconds: never
    later than ``limit`` after root first saw that very end (or its
    absence); an end root has not seen yet (a renewal since its last look)
    counts from now. None: no limit."""
    if record is None or limit is None:
        return None
    first = float(record["until"]["first"]) if record["until"]["value"] == until else boot
    return first + limit


def conflicts(holders: Sequence[Tuple[int, Env, Dict[str, Any]]], seen: Optional[Dict[str, Any]],
              boot_id: Optional[str], unordered: Collection[int] = (),
              book: Optional[Dict[Tuple[int, str], Record]] = None) -> Tuple[List[Tuple[int, Env, Dict[str, Any]]],
                                                List[Tuple[int, Env, Dict[str, Any]]],
                                                List[Tuple[int, Env, Dict[str, Any]]]]:
    """The holders of one GPU, split by root's record into those that keep
    it, those whose claim came after a claim it cannot share with (they
    lose), and those root cannot order (an admin must decide): claims in
    the order root first saw them, each kept if it fits with those kept so
    far (shares fit with shares; a whole GPU with nothing); claims first
    seen at the same look (or never) that do not fit together are
    undecided, and so is a later claim that would not fit with them. A
    claim root never saw came after its last look, so after those it saw;
    but one of a user in ``unordered`` (``over``: the record leaves some of
    their environments out) may be older: when it does not fit with those
    kept, it is undecided (they stay kept). ``book``: ``index(seen,
    boot_id)``, when the caller made it already (one GPU after another)."""
    timed = []
    if book is None:
        book = index(seen, boot_id)
    for holder in holders:
        first = first_seen(find(book, holder[0], holder[1]), holder[2])
        timed.append((float("inf") if first is None else first, holder))
    timed.sort(key=lambda item: (item[0], item[1][0], item[1][1]["id"]))
    kept: List[Tuple[int, Env, Dict[str, Any]]] = []
    lost: List[Tuple[int, Env, Dict[str, Any]]] = []
    undecided: List[Tuple[int, Env, Dict[str, Any]]] = []

    def clash(holder: Tuple[int, Env, Dict[str, Any]], others: Sequence[Tuple[int, Env, Dict[str, Any]]]) -> bool:
        whole = holder[2].get("memory") is None
        return bool(others) and (whole or any(other[2].get("memory") is None for other in others))

    at = 0
    while at < len(timed):
        when = timed[at][0]
        group = [holder for first, holder in timed if first == when]
        at += len(group)
        candidates = []
        for holder in group:
            if clash(holder, kept):
                (undecided if when == float("inf") and holder[0] in unordered else lost).append(holder)
            elif clash(holder, undecided):
                undecided.append(holder)
            else:
                candidates.append(holder)
        if any(clash(holder, [other for other in candidates if other is not holder]) for holder in candidates):
            undecided += candidates
        else:
            kept += candidates
    return kept, lost, undecided
