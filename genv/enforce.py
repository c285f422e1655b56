"""What ``genv enforce`` finds and what it does about it.

``decide`` is pure: from the attributed GPU processes, the state and the
policy it returns the violations, each with the process to act on:

- **unmanaged**: a process on a GPU in no environment;
- **misplaced**: a process on a GPU its environment does not hold;
- **over-share**: an environment's processes on a GPU use more memory than
  its ``gpu-memory`` share there (the biggest are chosen until the rest
  fits);
- **over-cap**: a user holds more than a cap allows (after the policy
  changed): the processes of their most recently attached environments,
  until the rest is within the caps (an over-cap environment without
  processes is reported with no process to act on);
- **conflict**: a GPU held whole by two environments, or whole by one and
  shared by others, which genv never hands out (somebody wrote their own
  state file). Who came first is decided only by root's record of what
  root-run commands saw (``genv.sightings``), never by the attach times
  users write: the processes on it of the environments whose claim root saw
  after one it cannot share with are chosen; claims root cannot order (it
  first saw them at the same look, or never) are reported for every
  environment involved, with nothing to stop: an admin must decide.

- **idle**: an environment that has held GPUs longer than the policy's
  ``max_idle`` without one of its own processes on them, by root's record
  (``genv.sightings``: since root last saw one there, or since it attached)
  and the processes on the GPUs now; an environment root never saw hold its
  GPUs is not judged. No process to stop: ``genv enforce --reclaim``
  detaches it.
- **line**: a place in the line of waiters that does not count (its
  process is not waiting in genv, or it asks for more than the owner's caps
  or the machine allow: written by hand, see ``environments.places``),
  reported with no process to act on (a waiter stopped with Ctrl-Z breaks
  no rule: it waits again when continued).

Never chosen: processes of exempt users or with exempt names, PID 1, and any
process that cannot be attributed safely (it exited, its PID was reused, or
its user is unknown). ``signal`` is the one place that sends signals: it
checks the process is still the one that was attributed (same start time)
right before each signal, through a pidfd where the system has one.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

    from .attribution import Process
    from .policy import Policy

RULES = ("unmanaged", "misplaced", "conflict", "over-cap", "over-share", "idle", "line")


class Violation:
    """A rule broken, by a process (or by an environment with no process to
    act on: ``process`` is None; ``decided`` False: an admin must decide)."""

    __slots__ = ("rule", "process", "detail", "uid", "env", "gpu", "decided", "idle")

    def __init__(self, rule: str, process: Optional[Process], detail: str, uid: Optional[int] = None,
                 env: Optional[Dict[str, Any]] = None, gpu: Optional[int] = None, decided: bool = True) -> None:
        self.rule, self.process, self.detail = rule, process, detail
        self.uid = process.uid if process is not None else uid
        self.env = process.env if process is not None else env
        self.gpu = process.gpu if process is not None else gpu
        self.decided = decided
        self.idle = 0.0  # seconds, for the idle rule


def _over_share(processes: Sequence[Process]) -> List[Violation]:
    groups: Dict[Tuple[int, int], List[Process]] = {}
    for process in processes:
        if process.env is not None and process.gpu is not None and not process.misplaced:
            groups.setdefault((id(process.env), process.gpu), []).append(process)
    found = []
    for group in groups.values():
        env, gpu = group[0].env, group[0].gpu
        assert env is not None and gpu is not None
        share = next((d.get("memory") for d in env["devices"] if d["index"] == gpu), None)
        if share is None:
            continue
        used = sum(p.memory or 0 for p in group)
        if used <= share:
            continue
        detail = "its environment uses %d MiB of a %d MiB share on GPU %d" % (used >> 20, share >> 20, gpu)
        for process in sorted(group, key=lambda p: -(p.memory or 0)):
            if used <= share:
                break
            found.append(Violation("over-share", process, detail))
            used -= process.memory or 0
    return found


def _over_cap(processes: Sequence[Process], users: Dict[int, Dict[str, Any]], machine: Any, policy: Policy,
              user: Callable[[int], str]) -> List[Violation]:
    from .policy import CAPS, held

    found = []
    for uid, state in users.items():
        if uid == 0:
            continue  # root is not capped
        name = user(uid)
        caps = {cap: policy.cap(name, cap) for cap in CAPS}
        if all(value is None for value in caps.values()):
            continue
        holding = [env for env in state["envs"] if env["devices"]]
        holding.sort(key=lambda env: max(d["attached"] for d in env["devices"]))
        while holding:
            now = held({uid: {"envs": holding}}, uid, machine)
            excess = [cap for cap, value in caps.items()
                      if value is not None and (now[cap] is None or now[cap] > value)]
            if not excess:
                break
            newest = holding.pop()
            detail = "%s holds more than %s = %s" % (name, excess[0], _cap_text(excess[0], caps[excess[0]]))
            own = [process for process in processes if process.env is newest]
            found += [Violation("over-cap", process, detail) for process in own]
            if not own:
                found.append(Violation("over-cap", None, detail, uid, newest))
    return found


def _cap_text(name: str, value: Any) -> str:
    if name == "max_gpu_memory":
        from .sizes import format_size

        return format_size(value) if value else "0"
    return str(value)


def _conflicts(processes: Sequence[Process], users: Dict[int, Dict[str, Any]], machine: Any,
               seen: Optional[Dict[str, Any]], boot_id: Optional[str], unordered: Collection[int]) -> List[Violation]:
    from .environments import holdings
    from .sightings import conflicts, index as by_env

    found = []
    book = by_env(seen, boot_id)
    for index, holders in holdings(users, machine).items():
        if len(holders) < 2 or all(reserved.get("memory") is not None for _, _, reserved in holders):
            continue
        kept, lost, undecided = conflicts(holders, seen, boot_id, unordered, book)
        for uid, env, _ in lost:
            first = kept[0][1]["id"] if kept else "?"
            detail = ("GPU %d is also held by environment %s, which a root-run genv saw hold it first"
                      % (index, first))
            own = [process for process in processes if process.gpu == index and process.env is env]
            found += [Violation("conflict", process, detail) for process in own]
            if not own:
                found.append(Violation("conflict", None, detail, uid, env, index))
        if undecided:  # (with those kept, when one is a claim root has no record of)
            ids = ", ".join(env["id"] for _, env, _ in kept + undecided)
            detail = ("GPU %d is held by environments %s, which cannot all have it, and no root-run genv saw "
                      "which came first: an admin must decide (genv detach in one of them)" % (index, ids))
            found += [Violation("conflict", None, detail, uid, env, index, decided=False)
                      for uid, env, _ in undecided]
    return found


def _idle(processes: Sequence[Process], users: Dict[int, Dict[str, Any]], policy: Policy, user: Callable[[int], str],
          seen: Optional[Dict[str, Any]], boot_id: Optional[str], boot: float) -> List[Violation]:
    from .environments import gpu_words
    from .sightings import busy, find, idle_since, index
    from .sizes import format_duration

    found = []
    in_use = busy(processes)
    book = index(seen, boot_id)
    for uid in sorted(users):
        if uid == 0:
            continue  # root is not capped
        name = user(uid)
        limit = policy.cap(name, "max_idle")
        if limit is None or name in policy.exempt_users:
            continue
        for env in users[uid]["envs"]:
            record = find(book, uid, env) if env["devices"] else None
            if record is None or id(env) in in_use:
                continue
            idle = boot - idle_since(record)
            if idle > limit:
                detail = "%s held %s with no process of the environment on them (max_idle = %s)" % (
                    gpu_words(env), format_duration(idle), format_duration(limit))
                violation = Violation("idle", None, detail, uid, env)
                violation.idle = idle
                found.append(violation)
    return found


def decide(processes: Sequence[Process], users: Dict[int, Dict[str, Any]], machine: Any, policy: Policy,
           user: Callable[[int], str], seen: Optional[Dict[str, Any]] = None,
           boot_id: Optional[str] = None, boot: Optional[float] = None,
           places: Sequence[Tuple[int, Dict[str, Any], str]] = (), unordered: Collection[int] = ()
           ) -> List[Violation]:
    """The violations, one per process (its first rule in RULES order), and
    those of environments with no process to act on. ``seen``: root's record
    of what root-run commands saw (``genv.sightings``), taken in ``boot_id``;
    ``boot``: now, on the boot clock (the idle rule needs both); ``places``:
    ``environments.places`` (uid, env, whether it counts or why not);
    ``unordered``: the users some of whose environments the record leaves
    out (``sightings.over``)."""
    from .environments import STOPPED, WAITING

    safe = [p for p in processes
            if p.known and p.uid is not None and p.pid != 1 and p.token is not None
            and not policy.exempt(user(p.uid), p.program, p.system)]
    found: List[Violation] = []
    for process in safe:
        if process.env is None:
            found.append(Violation("unmanaged", process, "on GPU %s, in no environment" % _gpu(process)))
        elif process.misplaced:
            found.append(Violation("misplaced", process, "on GPU %s, which environment %s does not hold"
                                   % (_gpu(process), process.env["id"])))
    found += [v for v in _conflicts(safe, users, machine, seen, boot_id, unordered)
              if v.uid is None or user(v.uid) not in policy.exempt_users]
    found += [v for v in _over_cap(safe, users, machine, policy, user)
              if v.uid is None or user(v.uid) not in policy.exempt_users]
    found += _over_share(safe)
    if boot is not None:
        found += _idle(processes, users, policy, user, seen, boot_id, boot)
    for uid, env, why in places:
        if why not in (WAITING, STOPPED) and user(uid) not in policy.exempt_users:
            found.append(Violation("line", None, "a place in line for %s that does not count: %s"
                                   % (_asked(env["waiting"]), why), uid, env))
    done = set()
    result = []
    for violation in found:
        p = violation.process
        key = (p.pid, p.gpu) if p is not None else (violation.rule, id(violation.env), violation.gpu)
        if key not in done:
            done.add(key)
            result.append(violation)
    result.sort(key=lambda v: (RULES.index(v.rule), -1 if v.gpu is None else v.gpu,
                               v.process.pid if v.process else -1, v.env["id"] if v.env else ""))
    return result


def _asked(waiting: Dict[str, Any]) -> str:
    if waiting["indices"]:
        return "GPU %s" % ",".join(map(str, waiting["indices"]))
    return "%d GPU%s" % (waiting["count"], "" if waiting["count"] == 1 else "s")


def _gpu(process: Process) -> str:
    return "?" if process.gpu is None else str(process.gpu)


def signal(pid: int, token: str, signum: int, facts_factory: Callable[[], Any]) -> str:
    """Send ``signum`` to the process ``pid`` only if it is still the one
    with identity ``token``. Returns the outcome: "sent", "gone" or
    "not permitted"."""
    pidfd = -1
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)  # from now on, signals reach this process or none
        except ProcessLookupError:
            return "gone"
        except OSError:
            pidfd = -1  # an old kernel: check, then kill (a small window remains)
    try:
        if facts_factory().token(pid) != token:
            return "gone"  # exited, or the PID now belongs to another process
        import signal as signals

        try:
            if pidfd >= 0:
                signals.pidfd_send_signal(pidfd, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "not permitted"
        return "sent"
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def alive(pid: int, token: str, facts_factory: Callable[[], Any]) -> bool:
    return bool(facts_factory().alive(pid, token))
