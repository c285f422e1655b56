"""Operations on environments, for every front end.

A shell (``genv activate``, ``attach``, ``detach``, ``deactivate``), a
process (``genv run``, the SDK's ``environment()``, a kernel) and later
front ends call these. Each takes plain arguments, changes the state under
the lock (``Session``), and returns what happened: the environment, the
activation plan for the terminal (``activation.Plan``), the failure if any,
and the messages for the user. Front ends render the plan (shell code, a
child's environment, ``os.environ``) and print or log the messages.

Two kinds of terminal:

- a **shell** stays in its environment whatever happens to the GPUs: an
  attach that fails leaves it activated, detached (``activate``);
- a **process** is in an environment only with what it asked for:
  ``enter`` creates or joins one and attaches (waiting in line if asked),
  or holds nothing at all; ``leave`` undoes exactly what ``enter`` did.
"""

from __future__ import annotations

import os

from .. import environments, signals
from ..errors import GenvError
from . import activation
from .session import Session, request_of

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

    from ..allocate import Request
    from .context import Context

WARN_BEFORE = 600.0
"""Seconds before a reservation's end when its terminals are told, once."""


class Outcome:
    """What an operation did: ``env`` (a copy, None when gone), the
    ``plan`` for the terminal, the ``failure`` (None: all done) and the
    ``messages`` for the user."""

    __slots__ = ("env", "plan", "failure", "messages")

    def __init__(self, env: Optional[Dict[str, Any]], plan: activation.Plan, failure: Optional[str] = None,
                 messages: Sequence[str] = ()) -> None:
        self.env, self.plan, self.failure, self.messages = env, plan, failure, list(messages)


def copy(env: Dict[str, Any]) -> Dict[str, Any]:
    return {**env, "config": dict(env["config"]), "devices": [dict(d) for d in env["devices"]],
            "terminals": [dict(t) for t in env["terminals"]]}


class Joined:
    """What joining an existing environment changed, to undo on leaving:
    its configuration before, the GPUs it held, and which of the joining
    processes were its terminals already."""

    __slots__ = ("config", "set", "indices", "already")

    def __init__(self, env: Dict[str, Any], changes: Dict[str, Any], pids: Sequence[int]) -> None:
        self.config = dict(env["config"])
        self.set = dict(changes)
        self.indices = set(environments.indices(env))
        self.already = {t["pid"] for t in env["terminals"] if t["pid"] in pids}


def _open(session: Session, terminals: Sequence[Tuple[int, str]], join: Optional[str],
          config: Dict[str, Any]) -> Tuple[int, Dict[str, Any], Optional[Joined]]:
    """Create an environment whose terminals are ``terminals``, or join
    ``join`` (one of the caller's own, or anyone's for root) with them,
    applying ``config`` to its configuration."""
    ctx = session.ctx
    joined: Optional[Joined] = None
    if join is not None:
        found = environments.find(session.users, join, ctx.euid)
        if found is None:
            raise GenvError("there is no environment %s (it may have ended; 'genv envs' lists the live ones)" % join)
        owner, env = found
        environments.check_owner(owner, ctx.euid, join, ctx.describe)
        claimants = environments.claimants(session.users, join)
        if owner != ctx.euid and len(claimants) > 1 and not any(
                j["uid"] == owner and j["env"] == join for j in session.users[ctx.euid].get("joins", ())):
            raise GenvError("there are environments %s of several users (%s): one copied the other's id into their "
                            "own state file, and genv cannot tell which one to join"
                            % (join, ", ".join(map(ctx.describe, claimants))))
        joined = Joined(env, config, [pid for pid, _ in terminals])
        env["config"].update(config)
    else:
        owner = ctx.euid
        pid, token = terminals[0]
        env = environments.new_env(environments.new_id(session.users, pid), session.now, dict(config), pid, token)
        session.tx.user(owner)["envs"].append(env)
    for pid, token in terminals:
        environments.add_terminal(env, pid, token)
        if owner != ctx.euid:  # root joins a user's environment
            environments.record_join(session.users, owner, env, pid, token)
            session.tx.changed(ctx.euid)
    session.tx.changed(owner)
    return owner, env, joined


def tell(session: Session, owner: int, env: Dict[str, Any], base: Mapping[str, str], plan: activation.Plan,
         newcomer: bool = False) -> List[str]:
    """Bring a shell's bookkeeping in line with its environment (the marker
    it compares at each prompt, the last note it was told, the end) and
    return what it must be told: the notes it has not seen (none for a
    ``newcomer``, which joins now) and, once, that the reservation ends
    within ``WARN_BEFORE`` seconds."""
    import math

    from ..sizes import format_duration

    plan.set(activation.SYNC_FILE, session.tx.marker_path(owner))
    if session.tx.unlocked is None:
        plan.set(activation.SYNC, session.tx.marker(owner))
    else:  # read without the lock: the marker may be newer than what was read, so look again when it differs
        plan.set(activation.SYNC, base.get(activation.SYNC, ""))
    told = base.get(activation.NOTE, "")
    messages = [] if newcomer or not told.isdigit() or len(told) > 18 else environments.notes_after(env, int(told))
    plan.set(activation.NOTE, str(environments.last_note(env)))
    until = env.get("until") if env["devices"] else None
    if until is None:
        plan.set(activation.UNTIL, None)
        plan.set(activation.WARNED, None)
        return messages
    end = str(math.ceil(until))
    plan.set(activation.UNTIL, end)
    left = until - session.boot
    if left <= WARN_BEFORE and base.get(activation.WARNED) != end:
        messages.append("the reservation of %s ends in %s ('genv attach --for DURATION' renews it)"
                        % (environments.gpu_words(env), format_duration(left, up=True)))
        plan.set(activation.WARNED, end)
    return messages


PROMPT_LOCK_TIMEOUT = 0.2
"""Seconds the shell's own ``genv sync`` (at a prompt, after a genv command)
waits for the state lock, which anyone can keep."""


def sync(ctx: Context, eid: str, base: Mapping[str, str], wait: bool = True) -> Outcome:
    """Bring the shell in line with its environment as the state is now
    (its GPUs were released, an end passed, another terminal detached): the
    shell function runs it when the marker changed, an end came near, or
    after any genv command (``genv sync``). Without ``wait``, a state lock
    that another process keeps longer than ``PROMPT_LOCK_TIMEOUT`` does not
    hold the shell: the terminal follows the state as its files say (what
    ended ends for every reader), and nothing is written."""
    from ..locking import timeout_from_env

    timeout = None if wait else min(timeout_from_env(), PROMPT_LOCK_TIMEOUT)
    with Session(ctx, fallback=not wait, lock_timeout=timeout) as session:
        found = session.mine(eid)
        if found is None:
            plan = activation.sync(None, base)  # it holds no GPU
            for name in activation.SYNC_VARS:
                plan.set(name, None)
            return Outcome(None, plan, None, [
                "environment %s no longer exists: this terminal holds no GPUs ('genv deactivate' leaves it)" % eid])
        owner, env = found
        if session.tx.unlocked is None:  # (told once: when they are taken out of the file)
            session.deliver_warnings(owner, env)
        plan = activation.sync(env, base)
        messages = session.messages + tell(session, owner, env, base, plan)
        return Outcome(copy(env), plan, None, messages)


def follow(session: Session, owner: int, env: Dict[str, Any], base: Mapping[str, str]
           ) -> Tuple[activation.Plan, List[str]]:
    """The end of every operation on a terminal's environment: its warnings
    taken out of the state, the plan that points the terminal at what it
    holds now, and what the terminal must be told (``tell``)."""
    session.deliver_warnings(owner, env)
    plan = activation.sync(env, base)
    return plan, tell(session, owner, env, base, plan)


def configure(ctx: Context, eid: str, base: Mapping[str, str], change: Callable[[Dict[str, Any]], bool]) -> Outcome:
    """Change the configuration of the shell's environment: ``change``
    edits it in place and says whether it changed it (``genv config``)."""
    with Session(ctx) as session:
        owner, env = session.owned_env(eid)
        if change(env["config"]):
            session.tx.changed(owner)
        plan, told = follow(session, owner, env, base)
        return Outcome(copy(env), plan, None, session.messages + told)


# --- a shell ---------------------------------------------------------------------------


def activate(ctx: Context, base: Mapping[str, str], config: Dict[str, Any], join: Optional[str] = None,
             attach: bool = False, prompt: bool = True) -> Outcome:
    """The calling shell enters a new environment with ``config`` (or joins
    ``join``, ``config`` changing its configuration) and, with ``attach``,
    attaches its GPUs. The shell is in the environment even when the attach
    fails (``failure``); a cap refusal leaves the configuration as it was."""
    from ..policy import CapExceeded

    session = Session(ctx)
    pid, token = session.terminal()
    discovery: Optional[str] = None
    if attach:
        try:
            session.observe()
        except GenvError as error:
            discovery = str(error)
    with session:
        owner, env, joined = _open(session, [(pid, token)], join, config)
        failure = None
        if attach:
            failure = discovery
            if failure is None:
                try:
                    failure = session.attach(owner, env, request_of(env["config"]))
                except CapExceeded as error:
                    if joined is not None:
                        env["config"] = joined.config
                    failure = str(error)
        session.deliver_warnings(owner, env)
        plan = activation.open_plan(env, base, ctx.shims(), prompt)
        told = tell(session, owner, env, base, plan, newcomer=True)
        result = copy(env)
    return Outcome(result, plan, failure, session.messages + told)


class AttachRequest:
    """What ``genv attach`` asks for: a count (None: the configured one),
    exact GPUs, over-subscription, how long to wait in line (None: not at
    all) and how long to hold the GPUs (``--for``; None: as before)."""

    __slots__ = ("count", "indices", "over_subscribe", "wait", "reserve")

    def __init__(self, count: Optional[int] = None, indices: Optional[Sequence[int]] = None,
                 over_subscribe: bool = False, wait: Optional[float] = None, reserve: Optional[float] = None) -> None:
        self.count = len(indices) if indices is not None else count
        self.indices = list(indices) if indices is not None else None
        self.over_subscribe, self.wait, self.reserve = over_subscribe, wait, reserve

    def request(self, env: Dict[str, Any]) -> Request:
        """The request, after storing the count it implies in the config."""
        config = env["config"]
        if self.count is not None:
            config["gpus"] = self.count
        if "gpus" not in config:
            raise GenvError("environment %s has no GPU count; run 'genv config gpus <count>' or use --count"
                            % env["id"])
        return request_of(config, self.indices, self.over_subscribe)


def attach(ctx: Context, eid: str, asked: AttachRequest, base: Mapping[str, str]) -> Outcome:
    """Attach GPUs to the shell's environment now or, with ``asked.wait``,
    in line. All or nothing: a refusal leaves the environment detached.
    Once it waits, signals in ``signals.HELD`` are held back from its last try on:
    the caller prints the plan, then restores its signal mask."""
    from .waitname import Name

    session = Session(ctx, observe=True)
    name = Name()
    try:
        with session:
            owner, env = session.owned_env(eid)
            if env.get("waiting"):
                raise GenvError("environment %s is already waiting for GPUs (pid %d)" % (eid, env["waiting"]["pid"]))
            config = dict(env["config"])
            request = asked.request(env)
            if env["config"] != config:
                session.tx.changed(owner)
            waiting = asked.wait is not None and asked.wait > 0
            failure = session.attach(owner, env, request, detach=not waiting, reserve=asked.reserve)
            if failure is not None and waiting and session.final:
                # No release could ever make it possible: fail now, as a plain attach.
                failure = session.attach(owner, env, request, reserve=asked.reserve)
            waits = failure is not None and waiting and not session.final
            if waits:
                from . import waitline

                waitline.join(session, owner, env, request, name, asked.reserve)
                session.tx.changed(owner)
            plan, told = follow(session, owner, env, base)
            result = copy(env)
        if waits:
            from . import waitline

            assert asked.wait is not None
            # (The shell function's look after the command brings the marker
            # and the end in line with what the wait attached.)
            done = waitline.wait(ctx, eid, asked.wait, request.count,
                                 lambda env: (copy(env), activation.sync(env, base)))
            (result, plan), failure = done[0] or (result, plan), done[1]
    finally:
        name.restore()
    return Outcome(result, plan, failure, session.messages + told)


def detach(ctx: Context, eid: str, base: Mapping[str, str]) -> Outcome:
    """Release the shell's environment's GPUs."""
    with Session(ctx) as session:
        owner, env = session.owned_env(eid)
        if environments.hold(env, []):
            session.tx.changed(owner)
        plan, told = follow(session, owner, env, base)
        return Outcome(copy(env), plan, None, session.messages + told)


def deactivate(ctx: Context, eid: str, base: Mapping[str, str]) -> Outcome:
    """The shell leaves its environment (which ends with its last terminal)
    and is restored exactly. The plan is the restore even when the state
    could not be changed (``failure`` says why)."""
    plan = activation.restore(base, ctx.shims())
    problem: Optional[str] = None
    try:
        session = Session(ctx)
        pid = ctx.shell_pid()
        with session:
            found = session.mine(eid)
            if found is not None:
                owner, env = found
                if any(terminal["pid"] == pid for terminal in env["terminals"]):
                    environments.remove_terminal(session.tx.user(owner), env, pid)
                    session.tx.changed(owner)
                    if owner != ctx.euid and environments.forget_join(session.users, owner, env, pid):
                        session.tx.changed(ctx.euid)
    except GenvError as error:
        problem = str(error)
    return Outcome(None, plan, problem)


# --- a process ---------------------------------------------------------------------------


class Settings:
    """What a process asks for: the configuration (count, share, name),
    exact GPUs, over-subscription, how long to wait (None: not at all;
    ``inf``: as long as it takes), an environment to join, and how long to
    hold the GPUs (``--for``, ``for_=``; None: no end but the policy's)."""

    __slots__ = ("config", "indices", "over_subscribe", "wait", "join", "reserve")

    def __init__(self, config: Optional[Dict[str, Any]] = None, indices: Optional[Sequence[int]] = None,
                 over_subscribe: bool = False, wait: Optional[float] = None, join: Optional[str] = None,
                 reserve: Optional[float] = None) -> None:
        self.config = dict(config or {})
        self.indices = list(indices) if indices is not None else None
        self.over_subscribe = over_subscribe
        self.wait = wait
        self.join = join
        self.reserve = reserve
        if self.indices is not None:
            self.config["gpus"] = len(self.indices)

    def request(self, config: Dict[str, Any]) -> Request:
        return request_of(config, self.indices, self.over_subscribe)


class Entered:
    """A process in an environment: the environment (a copy), the plan for
    its variables, the processes made its terminals, and, for a join, what
    to undo on leaving."""

    __slots__ = ("env", "plan", "pids", "joined")

    def __init__(self, env: Dict[str, Any], plan: activation.Plan, pids: List[int], joined: Optional[Joined]) -> None:
        self.env, self.plan, self.pids, self.joined = env, plan, pids, joined

    @property
    def id(self) -> str:
        return str(self.env["id"])


def enter(ctx: Context, settings: Settings, base: Mapping[str, str], also: Sequence[int] = (),
          sleeping: Optional[Set[int]] = None, checkpoint: Optional[Callable[[], None]] = None) -> Entered:
    """Make this process (and the processes ``also``, started by it)
    terminals of a new environment (or of ``settings.join``) with its GPUs,
    waiting in line if asked. Raises GenvError (attach's message) when the
    GPUs cannot be had; then nothing is held. Call it with ``signals.HELD`` signals
    blocked; while it sleeps in line the signal mask is ``sleeping`` (the
    caller's own), and it returns with the mask it was called with.
    ``checkpoint`` is called between looks while it waits (it may raise
    KeyboardInterrupt: the line is left, nothing held)."""
    from .waitname import Name

    pids = [os.getpid(), *also]
    # The processes on the GPUs matter only to an attach.
    wants = bool(settings.indices) or bool(settings.config.get("gpus")) or settings.join is not None
    session = Session(ctx, observe=wants)
    terminals = []
    for pid in pids:
        token = session.processes.token(pid)
        if token is None:
            raise GenvError("cannot find the process %d" % pid)
        terminals.append((pid, token))
    name = Name()
    try:
        with session:
            owner, env, joined = _open(session, terminals, settings.join, settings.config)
            request = settings.request(env["config"])
            failure = session.attach(owner, env, request, detach=False, reserve=settings.reserve) \
                if request.count else None
            if failure is not None:
                if not settings.wait or session.final:
                    # Leaving the block with an exception: nothing is written.
                    raise GenvError(failure)
                from . import waitline

                waitline.join(session, owner, env, request, name, settings.reserve)
            result = copy(env)
            plan = activation.open_plan(env, base, ctx.shims(), prompt=False)
        entered = Entered(result, plan, [pid for pid in pids if joined is None or pid not in joined.already], joined)
        if failure is None:
            return entered
        assert settings.wait is not None
        from . import waitline

        mask = signals.pthread_sigmask(signals.SIG_BLOCK, set())  # the caller's (HELD blocked)
        try:
            signals.pthread_sigmask(signals.SIG_SETMASK, set(mask) - signals.HELD if sleeping is None else sleeping)
            attached, failure = waitline.wait(ctx, entered.id, settings.wait, request.count,
                                              lambda env: (copy(env), activation.open_plan(env, base, ctx.shims(),
                                                                                            prompt=False)),
                                              detach=False, checkpoint=checkpoint)
            if failure is not None:
                raise GenvError(failure)
            assert attached is not None
            entered.env, entered.plan = attached
        except BaseException:
            signals.pthread_sigmask(signals.SIG_BLOCK, signals.HELD)
            leave(ctx, entered)
            raise
        finally:
            signals.pthread_sigmask(signals.SIG_SETMASK, mask)
        return entered
    finally:
        name.restore()


def leave(ctx: Context, entered: Entered) -> None:
    """Undo ``enter``: its processes stop being terminals (the environment
    goes with its last terminal, and its GPUs with it); a joined
    environment gets back its configuration and gives back the GPUs
    attached for the join. Call it with ``signals.HELD`` signals blocked."""
    eid = entered.id
    with Session(ctx) as session:
        found = session.mine(eid)
        if found is None:
            return
        owner, env = found
        joined = entered.joined
        waiting = env.get("waiting")
        if waiting and waiting["pid"] in set(entered.pids) | {os.getpid()}:
            env["waiting"] = None
        if joined is not None:
            if all(env["config"].get(key) == value for key, value in joined.set.items()):
                env["config"] = dict(joined.config)
            environments.hold(env, [d for d in env["devices"] if d["index"] in joined.indices])
        for pid in entered.pids:
            if any(t["pid"] == pid for t in env["terminals"]):
                environments.remove_terminal(session.tx.user(owner), env, pid)
                if owner != ctx.euid:
                    environments.forget_join(session.users, owner, env, pid)
                    session.tx.changed(ctx.euid)
        session.tx.changed(owner)
