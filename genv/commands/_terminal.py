"""A process (not a shell) as an environment's terminal: ``genv run`` and
the SDK's ``environment()``.

``enter`` creates an environment whose terminal is this process (or joins
one of the user's own), attaches GPUs (or waits in line for them), and
either succeeds or holds nothing. The command ``genv run`` starts (forked
first, held before its exec) becomes a terminal too, in the same step, so
that the environment lives exactly as long as any of them. ``leave`` removes this process's
terminals; the environment goes with its last. ``variables`` says what a
process of the environment must see in its environment variables.
"""

from __future__ import annotations

import os

from .. import environments
from ..errors import GenvError
from ..shell import cuda_list, gpu_list, hint_changes
from ._session import Session, request_of, shims

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Mapping, Optional, Sequence

    from ..cli import Context


class Settings:
    """What to ask for: the configuration (count, share, name), exact GPUs,
    over-subscription, how long to wait, or an environment to join."""

    def __init__(self, config: Optional[Dict[str, Any]] = None, indices: Optional[Sequence[int]] = None,
                 over_subscribe: bool = False, wait: Optional[float] = None, join: Optional[str] = None) -> None:
        self.config = dict(config or {})
        self.indices = list(indices) if indices is not None else None
        self.over_subscribe = over_subscribe
        self.wait = wait
        self.join = join


def _request(settings: Settings, config: Dict[str, Any]) -> Any:
    from ..allocate import Request

    if settings.indices is not None:
        config["gpus"] = len(set(settings.indices))
    base = request_of(config)
    return Request(base.count, base.memory, settings.indices, settings.over_subscribe)


def enter(ctx: Context, settings: Settings, also: Sequence[int] = ()) -> Dict[str, Any]:
    """Make this process (and the processes ``also``, started by it) terminals
    of an environment with its GPUs; returns a copy of the environment.
    Raises GenvError (attach's message when the GPUs cannot be had and it
    does not wait); then nothing is held."""
    pid = os.getpid()
    # The processes on the GPUs matter only to an attach.
    wants = bool(settings.indices) or bool(settings.config.get("gpus")) or settings.join is not None
    session = Session(ctx, observe=wants)
    tokens = [(each, session.processes.token(each)) for each in [pid, *also]]
    for each, token in tokens:
        if token is None:
            raise GenvError("cannot find the process %d" % each)
    with session:
        if settings.join is not None:
            found = environments.find(session.users, settings.join)
            if found is None:
                raise GenvError("there is no environment %s (it may have ended; 'genv envs' lists the live ones)"
                                % settings.join)
            owner, env = found
            environments.check_owner(owner, ctx.euid, settings.join, ctx.describe)
            env["config"].update(settings.config)
        else:
            owner = ctx.euid
            env = environments.new_env(environments.new_id(session.users, pid), session.now, settings.config,
                                       pid, tokens[0][1] or "")
            session.tx.user(owner)["envs"].append(env)
        for each, token in tokens:
            environments.add_terminal(env, each, token or "")
            if owner != ctx.euid:
                environments.record_join(session.users, owner, env, each, token or "")
                session.tx.changed(ctx.euid)
        session.tx.changed(owner)
        request = _request(settings, env["config"])
        failure = session.attach(owner, env, request, detach=False) if request.count else None
        if failure is not None:
            if not settings.wait or session.final:
                # Leaving the block with an exception: nothing is written.
                raise GenvError(failure)
            from . import _line as line

            line.join(session, env, request)
        result = _copy(env)
        eid = env["id"]
    if failure is not None:
        assert settings.wait is not None
        from . import _line as line

        try:
            attached, failure = line.wait(ctx, eid, settings.wait, request.count, _copy, detach=False)
            if failure is not None:
                raise GenvError(failure)
            assert attached is not None
            result = attached
            _unblock()  # a signal held back during the last try arrives here
        except BaseException:
            _block()
            leave(ctx, eid)
            _unblock()
            raise
    return result


def _block() -> None:
    from .. import signals

    signals.pthread_sigmask(signals.SIG_BLOCK, {signals.SIGINT, signals.SIGTERM, signals.SIGHUP})


def _unblock() -> None:
    from .. import signals

    signals.pthread_sigmask(signals.SIG_UNBLOCK, {signals.SIGINT, signals.SIGTERM, signals.SIGHUP})


def _copy(env: Dict[str, Any]) -> Dict[str, Any]:
    return {**env, "config": dict(env["config"]), "devices": [dict(d) for d in env["devices"]]}


def leave(ctx: Context, eid: str, pids: Sequence[int] = ()) -> None:
    """This process (and ``pids``) stop being terminals of ``eid``; the
    environment goes with its last terminal, and its GPUs with it."""
    gone = set(pids) | {os.getpid()}
    with Session(ctx) as session:
        found = environments.find(session.users, eid)
        if found is None:
            return
        owner, env = found
        for pid in gone:
            if any(t["pid"] == pid for t in env["terminals"]):
                environments.remove_terminal(session.tx.user(owner), env, pid)
                if owner != ctx.euid:
                    environments.forget_join(session.users, owner, env, pid)
                    session.tx.changed(ctx.euid)
        session.tx.changed(owner)


def variables(ctx: Context, env: Dict[str, Any], base: Mapping[str, str]) -> Dict[str, Optional[str]]:
    """What a process of ``env`` sees, as changes to ``base`` (None: unset):
    the GPUs for CUDA (in nvidia-smi's order), the environment's id, its
    share and the framework hints (values already in ``base`` win), and the
    nvidia-smi shim first on PATH (where genv's shims are)."""
    gpus = gpu_list(env)
    changes: Dict[str, Optional[str]] = {
        "CUDA_VISIBLE_DEVICES": cuda_list(env),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GENV_ENVIRONMENT_ID": env["id"],
        "GENV_ATTACHED_GPUS": gpus,
    }
    memory = next((d["memory"] for d in env["devices"] if d.get("memory") is not None), None)
    changes["GENV_GPU_MEMORY"] = str(memory) if memory is not None else None
    changes.update(hint_changes(env, base))
    path = base.get("PATH", "")
    wanted = command_path(ctx, path)
    if wanted != path:
        changes["PATH"] = wanted
    return changes


def command_path(ctx: Context, path: str) -> str:
    """PATH with genv's nvidia-smi shim first (where genv's shims are)."""
    folder = shims(ctx)
    if not os.path.isfile(os.path.join(folder, "nvidia-smi")) or folder in path.split(os.pathsep):
        return path
    return folder + (os.pathsep + path if path else "")


def apply(changes: Mapping[str, Optional[str]], environ: Any) -> Dict[str, Optional[str]]:
    """Apply ``changes`` to ``environ``; returns what it held before (None:
    unset), to restore exactly."""
    before: Dict[str, Optional[str]] = {}
    for name, value in changes.items():
        before[name] = environ.get(name)
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return before


def holding(env: Dict[str, Any]) -> List[int]:
    return environments.indices(env)
