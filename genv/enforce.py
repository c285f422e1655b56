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
  until the rest is within the caps.

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
    from typing import Any, Callable, Dict, List, Sequence, Tuple

    from .attribution import Process
    from .policy import Policy

RULES = ("unmanaged", "misplaced", "over-cap", "over-share")


class Violation:
    __slots__ = ("rule", "process", "detail")

    def __init__(self, rule: str, process: Process, detail: str) -> None:
        self.rule, self.process, self.detail = rule, process, detail


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
        over: List[Dict[str, Any]] = []
        while holding:
            now = held({uid: {"envs": holding}}, uid, machine)
            excess = [cap for cap, value in caps.items() if value is not None and now[cap] > value + 1e-9]
            if not excess:
                break
            over.append(holding.pop())  # the newest first
            detail = "%s holds more than %s = %d" % (name, excess[0], caps[excess[0]] or 0)
            for process in processes:
                if process.env is over[-1]:
                    found.append(Violation("over-cap", process, detail))
    return found


def decide(processes: Sequence[Process], users: Dict[int, Dict[str, Any]], machine: Any, policy: Policy,
           user: Callable[[int], str]) -> List[Violation]:
    """The violations, one per process (its first rule in RULES order)."""
    safe = [p for p in processes
            if p.known and p.uid is not None and p.pid != 1 and p.token is not None
            and not policy.exempt(user(p.uid), p.command)]
    found: List[Violation] = []
    for process in safe:
        if process.env is None:
            found.append(Violation("unmanaged", process, "on GPU %s, in no environment" % _gpu(process)))
        elif process.misplaced:
            found.append(Violation("misplaced", process, "on GPU %s, which environment %s does not hold"
                                   % (_gpu(process), process.env["id"])))
    found += _over_cap(safe, users, machine, policy, user)
    found += _over_share(safe)
    seen = set()
    result = []
    for violation in found:
        key = (violation.process.pid, violation.process.gpu)
        if key not in seen:
            seen.add(key)
            result.append(violation)
    result.sort(key=lambda v: (RULES.index(v.rule), v.process.gpu if v.process.gpu is not None else -1,
                               v.process.pid))
    return result


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
