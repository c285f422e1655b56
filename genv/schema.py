"""The user state file's format: its version, its shape, its migrations.

``validate`` is the rule both sides use: a writer refuses to write state it
would not read back, a reader drops what fails. Damage to the file as a
whole (not an object, the wrong uid, a bad device list) costs the file; a
damaged environment costs only that environment (``check`` returns the rest
and says what it dropped), never the user's other environments. See
docs/state.md.
"""

from __future__ import annotations

from .errors import GenvError
from .limits import MAX_GPUS, MAX_NOTE, MAX_PID, MAX_SIZE, MAX_TEXT, MAX_TIME, MAX_TOKEN, MIN_SIZE
from .text import encodable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Set, Tuple

FORMAT = 4
"""The version of the user state files this genv writes."""


def empty_user(uid: int) -> Dict[str, Any]:
    return {"format": FORMAT, "uid": uid, "devices": None, "envs": []}


# --- shape checks -------------------------------------------------------------
# The parser yields exact types, so ``type(x) is int`` (which also excludes
# bool) is enough. Every number is checked for its range (a float from JSON
# may be ``1e999``, an infinity). This runs over every environment of every
# user at every command: checks are inline, messages built only on failure.

_NUM = (int, float)


def _time_ok(value: Any) -> bool:
    return type(value) in _NUM and 0 <= value < MAX_TIME


def _text_ok(value: Any, limit: int = MAX_TEXT) -> bool:
    return type(value) is str and 0 < len(value) <= limit and encodable(value)


def _bytes_ok(value: Any, optional: bool) -> bool:
    if value is None:
        return optional
    return type(value) is int and 0 < value <= MAX_SIZE


def _share_ok(value: Any) -> bool:
    """A share of GPU memory (None: the whole GPU): at least 1 MiB."""
    return value is None or (type(value) is int and MIN_SIZE <= value <= MAX_SIZE)


def _pid_ok(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_PID


def _device_ok(device: Any, stamp: str) -> bool:
    """A GPU as listed (stamp ``""``) or as reserved (stamp ``"attached"``)."""
    return (
        type(device) is dict
        and type(device.get("index")) is int
        and 0 <= device["index"] < MAX_GPUS
        and (device.get("uuid") is None or _text_ok(device["uuid"]))
        and (not stamp or _time_ok(device.get(stamp)))
    )


def _waiting_ok(waiting: Any) -> bool:
    """An environment's place in the line of ``attach --wait``."""
    indices = waiting.get("indices") if type(waiting) is dict else None
    return (
        type(waiting) is dict
        and _pid_ok(waiting.get("pid"))
        and _text_ok(waiting.get("token"), MAX_TOKEN)
        and _time_ok(waiting.get("since"))
        and (waiting.get("arrived") is None or _time_ok(waiting["arrived"]))
        and type(waiting.get("count")) is int
        and 0 <= waiting["count"] <= MAX_GPUS
        and _share_ok(waiting.get("memory"))
        and (waiting.get("for") is None or (type(waiting["for"]) in _NUM and 0 < waiting["for"] < MAX_TIME))
        and type(waiting.get("over_subscribe")) is bool
        and (indices is None or (type(indices) is list and len(indices) <= MAX_GPUS
                                 and all(type(i) is int and 0 <= i < MAX_GPUS for i in indices)
                                 and len(set(indices)) == len(indices)))
    )


def env_problem(env: Any) -> Optional[str]:
    """What is wrong with one environment record, None if nothing."""
    if type(env) is not dict or not _text_ok(env.get("id")):
        return "an environment id is invalid"
    eid = env["id"]
    config = env.get("config")
    if not _time_ok(env.get("created")) or type(config) is not dict:
        return "environment %r is invalid" % eid
    gpus = config.get("gpus", 0)
    if (
        type(gpus) is not int
        or not 0 <= gpus <= MAX_GPUS
        or ("name" in config and not _text_ok(config["name"]))
        or not _share_ok(config.get("gpu_memory"))
    ):
        return "environment %r has an invalid config" % eid
    waiting = env.get("waiting")
    if waiting is not None and not _waiting_ok(waiting):
        return "environment %r has an invalid place in line" % eid
    terminals, reserved, warnings = env.get("terminals"), env.get("devices"), env.get("warnings")
    if type(terminals) is not list or type(reserved) is not list or type(warnings) is not list:
        return "environment %r is invalid" % eid
    for terminal in terminals:
        if type(terminal) is not dict or not _pid_ok(terminal.get("pid")) \
                or not _text_ok(terminal.get("token"), MAX_TOKEN):
            return "environment %r has an invalid terminal" % eid
    seen: Set[int] = set()
    for device in reserved:
        if (
            not _device_ok(device, "attached")
            or not _share_ok(device.get("memory"))
            or not _bytes_ok(device.get("total"), True)
            or device["index"] in seen
        ):
            return "environment %r has an invalid device" % eid
        seen.add(device["index"])
    for warning in warnings:
        if not _text_ok(warning, 4096):
            return "environment %r has an invalid warning" % eid
    # Format 4: the reservation's end and what the owner's commands saw (boot
    # clock), and the notes for its terminals.
    if (
        (env.get("until") is not None and not _time_ok(env["until"]))
        or (env.get("active") is not None and not _time_ok(env["active"]))
        or type(env.get("busy", False)) is not bool
    ):
        return "environment %r has an invalid time" % eid
    notes = env.get("notes", [])
    if type(notes) is not list or len(notes) > 64:
        return "environment %r has invalid notes" % eid
    last = 0
    for note in notes:
        if type(note) is not dict or type(note.get("id")) is not int or not last < note["id"] < MAX_NOTE \
                or not _text_ok(note.get("text"), 4096):
            return "environment %r has invalid notes" % eid
        last = note["id"]
    return None


def _file_problem(data: Any, uid: int) -> Optional[str]:
    """What is wrong with the file as a whole (not its environments)."""
    if type(data) is not dict:
        return "not an object"
    if type(data.get("uid")) is not int or data["uid"] != uid:
        return "uid does not match the file name"
    devices = data.get("devices")
    if devices is not None:
        if type(devices) is not dict or not _text_ok(devices.get("key"), 4096):
            return "devices is invalid"
        if not _time_ok(devices.get("checked")) or type(devices.get("list")) is not list:
            return "devices is invalid"
        for device in devices["list"]:
            if (
                not _device_ok(device, "")
                or (device.get("name") is not None and not _text_ok(device["name"]))
                or not _bytes_ok(device.get("total"), True)
            ):
                return "a device is invalid"
    if type(data.get("envs")) is not list:
        return "envs is not a list"
    joins = data.get("joins", [])
    if type(joins) is not list or (joins and uid != 0):
        return "joins is invalid"
    for join in joins:
        if (
            type(join) is not dict
            or type(join.get("uid")) is not int
            or not _text_ok(join.get("env"))
            or not _pid_ok(join.get("pid"))
            or not _text_ok(join.get("token"), MAX_TOKEN)
        ):
            return "a join is invalid"
    seen = data.get("seen")
    if seen is not None and (uid != 0 or not _seen_ok(seen)):
        return "seen is invalid"
    return None


def _seen_ok(seen: Any) -> bool:
    """Root's record of what root-run commands saw (genv.sightings)."""
    if type(seen) is not dict or not _text_ok(seen.get("boot"), MAX_TOKEN) or type(seen.get("envs")) is not list:
        return False
    for record in seen["envs"]:
        if (
            type(record) is not dict
            or type(record.get("uid")) is not int
            or not 0 <= record["uid"] <= MAX_PID
            or not _text_ok(record.get("env"))
            or type(record.get("claims")) is not list
            or not _time_ok(record.get("since"))
            or (record.get("active") is not None and not _time_ok(record["active"]))
            or type(record.get("busy")) is not bool
            or type(record.get("until")) is not dict
            or not _time_ok(record["until"].get("first"))
            or (record["until"].get("value") is not None and not _time_ok(record["until"]["value"]))
        ):
            return False
        for claim in record["claims"]:
            gpu = claim.get("gpu") if type(claim) is dict else None
            if (
                not (_text_ok(gpu) or (type(gpu) is int and 0 <= gpu < MAX_GPUS))
                or type(claim.get("whole")) is not bool
                or not _time_ok(claim.get("first"))
            ):
                return False
    return True


def check(data: Any, uid: int) -> Tuple[Dict[str, Any], List[str]]:
    """A current-format user state for readers: ValueError if the file as
    a whole is damaged; otherwise the state without its damaged
    environments, and what was wrong with each one dropped."""
    problem = _file_problem(data, uid)
    if problem is not None:
        raise ValueError(problem)
    dropped: List[str] = []
    kept = []
    seen: Set[str] = set()
    for env in data["envs"]:
        problem = env_problem(env)
        if problem is None and env["id"] in seen:
            problem = "environment %r appears twice" % env["id"]
        if problem is not None:
            dropped.append(problem)
            continue
        seen.add(env["id"])
        kept.append(env)
    if dropped:
        data["envs"] = kept
    return data, dropped


def validate(data: Any, uid: int) -> Dict[str, Any]:
    """Check a current-format user state as readers will; raise ValueError
    naming the first problem (writers refuse to write it)."""
    checked, dropped = check(data, uid)
    if dropped:
        raise ValueError(dropped[0])
    return checked


# --- format migrations ----------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _migrate_1(data: Any, uid: int) -> Dict[str, Any]:
    """Format 1 kept environments in an object keyed by id, terminals as bare
    PIDs and devices as bare indices. A bare PID is adopted only if a process
    with it runs now (the best that format allows); its token is recorded from
    then on. The result is checked like any other state."""
    from .procs import processes

    _check(isinstance(data, dict) and isinstance(data.get("envs"), dict), "envs is not an object")
    facts = processes()
    envs = []
    for eid, old in data["envs"].items():
        _check(isinstance(old, dict), "an environment is not an object")
        created = old.get("created")
        _check(_time_ok(created), "an environment's creation time is invalid")
        terminals = []
        pids = old.get("pids")
        _check(isinstance(pids, list), "pids is not a list")
        for pid in pids:
            _check(_pid_ok(pid), "a pid is invalid")
            token = facts.token(pid)
            if token is not None:
                terminals.append({"pid": pid, "token": token})
        indices = old.get("devices", [])
        _check(isinstance(indices, list), "devices is not a list")
        devices = [{"index": index, "uuid": None, "attached": created} for index in indices]
        config = old.get("config", {})
        _check(isinstance(config, dict), "config is not an object")
        envs.append({"id": eid, "created": created, "config": config, "terminals": terminals,
                     "devices": devices, "warnings": []})
    return {"format": 2, "uid": uid, "devices": None, "envs": envs}


def _migrate_2(data: Any, uid: int) -> Dict[str, Any]:
    """Format 3 added memory shares (``gpu_memory`` in a configuration,
    ``memory`` in a reservation), GPU sizes in the device list, and places
    in the line of ``attach --wait``; a format 2 file has none of them, so
    it is format 3 as it is. (The version changed so that a genv that knows
    nothing of shares refuses these files instead of misreading them.)"""
    _check(isinstance(data, dict), "not an object")
    return {**data, "format": 3}


def _migrate_3(data: Any, uid: int) -> Dict[str, Any]:
    """Format 4 refuses shares below 1 MiB (nvidia-smi's unit: a smaller
    one showed as 0 everywhere and counted as no GPU against the caps): a
    format 3 file's smaller shares become 1 MiB. (Format 4 also added what
    root-run genv commands saw, reservation ends and the notes for an
    environment's terminals: a format 3 file has none of them.)"""
    _check(isinstance(data, dict), "not an object")

    def at_least(record: Any, key: str) -> None:
        if isinstance(record, dict) and type(record.get(key)) is int and 0 < record[key] < MIN_SIZE:
            record[key] = MIN_SIZE

    for env in data.get("envs") or ():
        if isinstance(env, dict):
            at_least(env.get("config"), "gpu_memory")
            at_least(env.get("waiting"), "memory")
            devices = env.get("devices")
            for device in devices if isinstance(devices, list) else ():
                at_least(device, "memory")
    return {**data, "format": 4}


_MIGRATIONS = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3}


class NewerFormat(GenvError):
    """A file in a format this genv does not know (``version``)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


def upgrade(data: Any, uid: int, name: str) -> Tuple[Dict[str, Any], List[str]]:
    """Bring a parsed state file to the current format and check it (as
    ``check``), or raise NewerFormat or ValueError."""
    _check(isinstance(data, dict), "not an object")
    version = data.get("format")
    _check(type(version) is int and version >= 1, "no valid format version")
    if version > FORMAT:
        raise NewerFormat(
            "state was written by a newer genv: %s has format %d, this genv reads formats up to %d; "
            "upgrade genv" % (name, version, FORMAT), version
        )
    while version < FORMAT:
        data = _MIGRATIONS[version](data, uid)
        version = data["format"]
    return check(data, uid)
