"""Whose is each GPU process: its user, its environment, and whether it runs
on a GPU its environment holds.

A pure decision over nvidia-smi's process list, the state, and process facts
asked through the ``procs`` object passed in (so tests can fake them):

- **user**: the real uid of the process; unknown (None) when /proc does not
  show it (``hidepid``, another PID namespace).
- **environment**: the live environment one of whose terminals is the
  nearest such ancestor of the process (or the process itself). A terminal
  counts only if its PID *and* identity token match (as for liveness) and
  its process belongs to the environment's owner, or to root when root's
  own state records that root joined that environment: a user can write
  anything into their own state file, but cannot claim somebody else's
  shell. Failing that, ``GENV_ENVIRONMENT_ID`` from the process's own
  environment, accepted only if that live environment belongs to the
  process's user (anyone can set the variable by hand). Failing that, none:
  the process is *unmanaged*.
- **misplaced**: in an environment, on a GPU the environment does not hold.

A process that exited between nvidia-smi's answer and the look at /proc, or
whose PID was reused meanwhile (it started after the query), is *unknown*:
every field that would come from /proc is None, and it is never attributed.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

    from .gpus import App

    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]

ENV_VAR = "GENV_ENVIRONMENT_ID"
MAX_DEPTH = 256


class Process:
    """One GPU process on one GPU, attributed. Everything is read when it is
    made (``attribute``); ``command`` (its command line), ``program`` (its
    executable's path, /proc/<pid>/exe, not what it calls itself) and
    ``system`` (whether that file and every folder above it are root's and
    writable by root only) only when the caller asks for details (ps,
    status, enforce: an attach needs none of them); otherwise, and where
    /proc does not say, nvidia-smi's process name (and ``system`` False)."""

    __slots__ = ("gpu", "pid", "uid", "owner", "env", "memory", "name", "known", "misplaced", "token",
                 "command", "program", "system")

    def __init__(self, gpu: Optional[int], pid: int, memory: Optional[int], command: Optional[str]) -> None:
        self.gpu = gpu
        self.pid = pid
        self.memory = memory  # bytes, None if nvidia-smi did not say
        self.name = command  # nvidia-smi's process name
        self.command = command
        self.program = command
        self.system = False  # the program is the system's (root's file in root's folders)
        self.known = False  # False: gone or reused, nothing below is known
        self.uid: Optional[int] = None
        self.owner: Optional[int] = None  # the environment's owner
        self.env: Optional[Env] = None
        self.misplaced = False
        self.token: Optional[str] = None  # its identity, to check before signalling it

    @property
    def managed(self) -> Optional[bool]:
        """In an environment (True), outside every one (False), unknown (None)."""
        return (self.env is not None) if self.known else None


class _Terminals:
    """Every environment's terminals, by PID, and root's joins."""

    def __init__(self, users: Users) -> None:
        self.by_pid: Dict[int, List[Tuple[int, Env, str]]] = {}
        for uid in sorted(users):
            for env in users[uid]["envs"]:
                for terminal in env["terminals"]:
                    self.by_pid.setdefault(terminal["pid"], []).append((uid, env, terminal["token"]))
        self.joins = {(join["uid"], join["env"], join["pid"], join["token"])
                      for join in users.get(0, {}).get("joins", ())}

    def of(self, pid: int, facts: Any) -> Optional[Tuple[int, Env]]:
        """The environment whose terminal ``pid`` is, if it truly is one."""
        for owner, env, token in self.by_pid.get(pid, ()):
            if facts.token(pid) != token:
                continue
            uid = facts.uid(pid)
            if uid == owner or (uid == 0 and (owner, env["id"], pid, token) in self.joins):
                return owner, env
        return None


def lineage(pid: int, facts: Any) -> Iterator[int]:
    """The process and its ancestors, nearest first."""
    current: Optional[int] = pid
    seen: Set[int] = set()
    while current is not None and current > 0 and current not in seen and len(seen) < MAX_DEPTH:
        seen.add(current)
        yield current
        current = facts.parent(current)


def _by_ancestry(pid: int, facts: Any, terms: _Terminals) -> Optional[Tuple[int, Env]]:
    for current in lineage(pid, facts):
        found = terms.of(current, facts)
        if found is not None:
            return found
    return None


def _by_variable(pid: int, uid: Optional[int], facts: Any, users: Users) -> Optional[Tuple[int, Env]]:
    if uid is None or not users.get(uid, {}).get("envs"):
        return None  # no environment of that user to be in: no need to look
    eid = facts.environ(pid, ENV_VAR)
    if not eid:
        return None
    for env in users.get(uid, {}).get("envs", ()):
        if env["id"] == eid and any(facts.alive(t["pid"], t["token"]) for t in env["terminals"]):
            return uid, env
    return None


def _environment(pid: int, facts: Any, users: Users, terms: _Terminals) -> Optional[Tuple[int, Env]]:
    return _by_ancestry(pid, facts, terms) or _by_variable(pid, facts.uid(pid), facts, users)


def attribute(apps: Sequence[App], machine: Sequence[Dict[str, Any]], users: Users, facts: Any,
              mark: float, details: bool = False) -> List[Process]:
    """Attribute each of nvidia-smi's process rows (see the module's
    docstring); with ``details``, read each one's command line and program."""
    from .environments import holdings

    index_of = {device["uuid"]: device["index"] for device in machine if device.get("uuid")}
    held: Dict[int, Set[int]] = {}
    for index, holders in holdings(users, machine).items():
        for _, env, _ in holders:
            held.setdefault(id(env), set()).add(index)
    terms = _Terminals(users)
    result = []
    for app in apps:
        process = Process(index_of.get(app.uuid) if app.uuid else None, app.pid, app.memory, app.name)
        if facts.started_before(app.pid, mark):
            process.known = True
            process.token = facts.token(app.pid)
            process.uid = facts.uid(app.pid)
            if details:
                process.command = facts.command(app.pid) or app.name
                # Exempt by path only where the path is that very file (a
                # process may run in a mount namespace of its user's making);
                # nvidia-smi's name only where /proc does not say.
                program = facts.program(app.pid)  # (reads /proc/<pid>/exe once, and keeps it)
                readable = program is not None or facts.executable(app.pid) is not None
                process.program = program if readable else app.name
                process.system = facts.system_program(app.pid)
            found = _environment(app.pid, facts, users, terms)
            if found is not None:
                process.owner, process.env = found
                process.misplaced = process.gpu is None or process.gpu not in held.get(id(process.env), ())
        result.append(process)
    return result


def member_test(users: Users, env: Env, facts: Any, mark: float) -> Any:
    """A function telling whether a PID belongs to ``env``, by the rules of
    ``attribute`` (the nearest environment up the tree wins); a process that
    started after ``mark`` (a reused PID) belongs to none."""
    terms = _Terminals(users)

    def member(pid: int) -> bool:
        if not facts.started_before(pid, mark):
            return False
        found = _environment(pid, facts, users, terms)
        return found is not None and found[1] is env

    return member


def busy(processes: Sequence[Process], describe: Any) -> Dict[int, List[str]]:
    """GPUs on which processes outside every environment hold memory:
    index -> ["pid 4242 (bob)", ...]. Unknown processes do not count: they
    are gone."""
    found: Dict[int, List[str]] = {}
    for process in processes:
        if process.known and process.env is None and process.gpu is not None and process.memory != 0:
            who = describe(process.uid) if process.uid is not None else "unknown user"
            found.setdefault(process.gpu, []).append("pid %d (%s)" % (process.pid, who))
    return found
