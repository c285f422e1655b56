"""genv's Python SDK: GPU environments for programs and notebooks.

    import genv.sdk

    with genv.sdk.environment(gpus=1, gpu_memory="8g") as env:
        print(env.id, env.gpus)          # e.g. "4242", [3]
        with genv.sdk.lock():            # take turns with others on these GPUs
            train()

Inside the ``with`` block this process is a terminal of a new environment
(``genv envs`` lists it; ``genv ps`` attributes its GPU processes to it), and
``os.environ`` holds what a terminal of the environment sees:
``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``, ``GENV_ENVIRONMENT_ID``,
``GENV_ATTACHED_GPUS``, the framework hints for a share, and genv's
nvidia-smi shim first on ``PATH`` (where genv's files are, as in a clone).
Leaving the block restores ``os.environ`` exactly and frees the GPUs; so does
the process dying. CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when it starts:
start the GPU work (or the processes doing it) inside the block.

``status()``, ``devices()``, ``envs()`` and ``ps()`` return the documents of
``genv status``, ``devices``, ``envs`` and ``ps`` (docs/formats.md) as Python
objects. Every failure is an ``Error`` (``genv.errors.GenvError``) carrying
the message the command line would print; nothing is printed: progress and
warnings go to the logger ``"genv"`` (at INFO), for the caller to show or not.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from .errors import GenvError as Error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

__all__ = ["Environment", "Error", "devices", "environment", "envs", "lock", "ps", "status"]


class Environment:
    """The environment of an ``environment()`` block."""

    def __init__(self, doc: Dict[str, Any]) -> None:
        self.id: str = doc["id"]
        self.name: Optional[str] = doc["config"].get("name")
        devices = sorted(doc["devices"], key=lambda device: device["index"])
        self.gpus: List[int] = [device["index"] for device in devices]
        self.uuids: List[Optional[str]] = [device.get("uuid") for device in devices]
        memory = next((device.get("memory") for device in devices if device.get("memory") is not None), None)
        self.gpu_memory: Optional[int] = memory  # bytes of each GPU; None: whole GPUs

    def __repr__(self) -> str:
        return "Environment(id=%r, gpus=%r)" % (self.id, self.gpus)


@contextmanager
def _quiet() -> Iterator[None]:
    """Messages of genv's code go to the logger "genv", not to stderr."""
    from .cli import MESSAGES

    def to_log(text: str) -> None:
        import logging

        logging.getLogger("genv").info(text)

    token = MESSAGES.set(to_log)
    try:
        yield
    finally:
        MESSAGES.reset(token)


def _cuda_started() -> bool:
    import sys

    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support
        return False


@contextmanager
def environment(gpus: Optional[int] = None, gpu_memory: Union[str, int, None] = None, name: Optional[str] = None,
                wait: Optional[float] = None, index: Optional[Sequence[int]] = None, over_subscribe: bool = False,
                join: Optional[str] = None) -> Iterator[Environment]:
    """This process in a new environment (or, with ``join``, in one of your
    own) with ``gpus`` GPUs, whole or a share of ``gpu_memory`` (bytes, or a
    size such as "8g") of each, or exactly the GPUs ``index``. ``wait``:
    seconds to wait in line for them (``float("inf")``: as long as it takes);
    without it, Error when they cannot be had now. See the module's doc."""
    from .cli import Context
    from .commands import _terminal as terminal
    from .environments import check_text
    from .gpus import parse_count
    from .sizes import parse_size

    config: Dict[str, Any] = {}
    if gpus is not None:
        config["gpus"] = parse_count(str(gpus), "GPU count")
    if gpu_memory is not None:
        config["gpu_memory"] = parse_size(str(gpu_memory), "GPU memory")
    if name is not None:
        config["name"] = check_text(name, "name")
    if wait is not None:
        import math

        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
            raise Error("invalid wait %r: expected a number of seconds (float('inf'): as long as it takes)"
                        % (wait,))
    if _cuda_started():
        import warnings

        warnings.warn("CUDA was initialised in this process before genv.sdk.environment(): the GPUs of the "
                      "environment take effect only in processes started from now on", RuntimeWarning,
                      stacklevel=3)
    ctx = Context()
    settings = terminal.Settings(config, index, over_subscribe, wait, join)
    with _quiet():
        doc = terminal.enter(ctx, settings)
    before = terminal.apply(terminal.variables(ctx, doc, os.environ), os.environ)
    try:
        yield Environment(doc)
    finally:
        terminal.apply(before, os.environ)
        with _quiet():
            terminal.leave(Context(), doc["id"])


@contextmanager
def lock(timeout: Optional[float] = None) -> Iterator[None]:
    """Hold the lock of each GPU of the current environment (as ``genv lock``),
    waiting for it (at most ``timeout`` seconds, if given)."""
    from . import gpu_locks
    from .cli import Context
    from .commands.lock import devices_of
    from .store import StateDir

    ctx = Context()
    with _quiet():
        held = gpu_locks.hold(StateDir(), devices_of(ctx), ctx.user,
                              gpu_locks.FOREVER if timeout is None else timeout)
    try:
        yield
    finally:
        gpu_locks.release(held)


def status() -> Dict[str, Any]:
    """The document of ``genv status --format json`` for this process."""
    from .cli import Context
    from .commands._session import Session
    from .listing import status_doc

    ctx = Context()
    if ctx.eid is None:
        return {"active": False}
    with _quiet(), Session(ctx, listing=True, observe=True) as session:
        owner, env = session.env(ctx.eid)
        return status_doc(owner, env, session.attributed(), ctx.user)


def envs() -> List[Dict[str, Any]]:
    """The document of ``genv envs --format json``."""
    from .cli import Context
    from .commands._session import Session
    from .listing import envs_docs

    ctx = Context()
    with _quiet(), Session(ctx, listing=True) as session:
        return envs_docs(session.users, ctx.user)


def devices() -> List[Dict[str, Any]]:
    """The document of ``genv devices --format json``."""
    from .cli import Context
    from .commands._session import Session
    from .listing import devices_docs

    ctx = Context()
    with _quiet(), Session(ctx, holders_only=True, listing=True, observe=True, usage=True) as session:
        assert session.snapshot is not None
        return devices_docs(session.holders, session.machine, session.snapshot.used, session.attributed(), ctx.user)


def ps() -> List[Dict[str, Any]]:
    """The document of ``genv ps --format json``."""
    from .cli import Context
    from .commands._session import Session
    from .listing import ps_docs

    ctx = Context()
    with _quiet(), Session(ctx, holders_only=True, listing=True, observe=True) as session:
        return ps_docs(session.attributed(), ctx.user)
