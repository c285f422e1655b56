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

``environment(join=ID)`` enters one of your own environments instead (for
example the one a ``with`` block further out made); leaving gives it back
exactly as it was: its configuration, and the GPUs the join attached are
released. Blocks nest in one thread; ``os.environ`` is the process's, so a
block in a second thread while one is open in another raises ``Error``.

An interrupt (Ctrl-C, a Jupyter interrupt) that lands while genv enters or
leaves never leaves the environment held: entering is undone, leaving
completes, then ``KeyboardInterrupt`` is raised. (A SIGINT handler of the
program's own that does not raise is called, and the block runs with its
environment.) One window is Python's own:
an interrupt between ``__enter__`` returning and the block's first statement
skips ``__exit__`` (CPython before 3.15; the environment then ends with the
process).

``status()``, ``devices()``, ``envs()`` and ``ps()`` return the documents of
``genv status``, ``devices``, ``envs`` and ``ps`` (docs/formats.md) as Python
objects. Every failure is an ``Error`` (``genv.errors.GenvError``) carrying
the message the command line would print; nothing is printed: progress and
warnings go to the logger ``"genv"`` (at INFO), for the caller to show or not.
The SDK leaves the caller's signal mask, handlers and timers as they were.
"""

from __future__ import annotations

import _thread
import os
from contextlib import contextmanager

from .errors import GenvError as Error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

    from .core.context import Context
    from .core.operations import Entered, Settings

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
    from .report import SINK

    def to_log(text: str) -> None:
        import logging

        logging.getLogger("genv").info(text)

    token = SINK.set(to_log)
    try:
        yield
    finally:
        SINK.reset(token)


def _context() -> Context:
    from .core.context import Context

    return Context(library=True)


def _cuda_started() -> bool:
    import sys

    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support
        return False


# --- checking what the caller passes (as the command line checks its words) ----------


def _text(value: Any, what: str) -> str:
    """An int (not a bool) as the command line would have it, for the
    command line's own check and message."""
    if type(value) is not int:
        raise Error("invalid %s %r: expected a whole number" % (what, value))
    if value.bit_length() > 64:
        raise Error("invalid %s: %s, far out of range" % (what, "a negative number" if value < 0 else "a number"))
    return str(value)


def _settings(gpus: Any, gpu_memory: Any, name: Any, wait: Any, index: Any, over_subscribe: Any,
              join: Any, for_: Any = None) -> Settings:
    from .core.operations import Settings
    from .environments import check_text
    from .gpus import parse_count
    from .limits import MAX_SECONDS
    from .sizes import parse_size

    config: Dict[str, Any] = {}
    if gpus is not None:
        config["gpus"] = parse_count(_text(gpus, "GPU count"), "GPU count")
    if gpu_memory is not None:
        text = gpu_memory if isinstance(gpu_memory, str) else _text(gpu_memory, "GPU memory")
        config["gpu_memory"] = parse_size(text, "GPU memory")
    if name is not None:
        if not isinstance(name, str):
            raise Error("invalid name %r: expected a string" % (name,))
        config["name"] = check_text(name, "name")
    indices: Optional[List[int]] = None
    if index is not None:
        if isinstance(index, (str, bytes)) or not isinstance(index, (list, tuple, range)):
            raise Error("invalid index %r: expected a list of GPU indices such as [0, 2]" % (index,))
        indices = [parse_count(_text(each, "GPU index"), "GPU index") for each in index]
        if len(set(indices)) != len(indices):
            raise Error("invalid index %r: a GPU is named twice" % (index,))
        if "gpus" in config and config["gpus"] != len(indices):
            raise Error("gpus=%d and index=%r disagree" % (config["gpus"], index))
    seconds: Optional[float] = None
    if wait is not None:
        import math

        number = not isinstance(wait, bool) and isinstance(wait, (int, float))
        if not number or (isinstance(wait, float) and math.isnan(wait)) or wait < 0 \
                or (wait > MAX_SECONDS and wait != float("inf")):
            raise Error("invalid wait %r: expected a number of seconds up to %d (float('inf'): as long as it "
                        "takes)" % (wait, MAX_SECONDS))
        seconds = float(wait)
    if type(over_subscribe) is not bool:
        raise Error("invalid over_subscribe %r: expected True or False" % (over_subscribe,))
    joined: Optional[str] = None
    if join is not None:
        if not isinstance(join, str):
            raise Error("invalid join %r: expected an environment id" % (join,))
        joined = check_text(join, "environment id")
    reserve: Optional[float] = None
    if for_ is not None:
        from .sizes import parse_duration

        if isinstance(for_, str):
            reserve = parse_duration(for_, "for_")
        elif isinstance(for_, bool) or not isinstance(for_, (int, float)) or not 0 < for_ <= MAX_SECONDS:
            raise Error("invalid for_ %r: expected a duration such as \"2h\" or a number of seconds above 0 and up "
                        "to %d" % (for_, MAX_SECONDS))
        else:
            reserve = float(for_)
    return Settings(config, indices, over_subscribe, seconds, joined, reserve)


# --- the blocks open in this process -------------------------------------------------
# os.environ is the process's: blocks nest (last in, first out) in one
# thread; a second thread's block while one is open is refused.

_OPEN: List[Any] = []  # [thread id, environment] of the blocks open now, innermost last
_OPEN_LOCK = _thread.allocate_lock()


class _Guard:
    """An interrupt (SIGINT) never leaves an environment held that its block
    does not hold. Python runs signal handlers in the main thread, whichever
    thread the signal reached, so holding SIGINT back in the signal mask is
    not enough: while a block is open, SIGINT's handler is this guard,
    which calls the caller's own handler at once, but for an interrupt that
    lands in genv's code:

    - while genv enters or leaves (``busy``): held, then delivered when the
      state and ``os.environ`` agree again; while it waits in line,
      delivered between two looks (``checkpoint``): raised there, it leaves
      the line;
    - while genv enters, or after entering is done but before ``__enter__``
      returns: delivered then, and, if the caller's handler raises (as
      Python's own does), entering is undone before the exception leaves
      the ``with`` (a handler that does not raise gets its block, with the
      environment);
    - as ``__exit__`` starts, before its first line: held until leaving is
      done.

    It is put back as it was when the block ends (or not, if the block set
    its own handler meanwhile). Only the main thread can set handlers: in
    other threads there is no guard, and none is needed (an interrupt is
    raised in the main thread)."""

    def __init__(self, env: "environment") -> None:
        from . import signals

        self.env = env
        self.busy = True
        self.pending = False
        self.previous: Any = None
        self.installed = False
        try:
            self.previous = signals.getsignal(signals.SIGINT)
            if callable(self.previous) or self.previous == signals.SIG_DFL:
                signals.signal(signals.SIGINT, self.handle)
                self.installed = True
        except (ValueError, OSError):  # not the main thread
            self.installed = False

    def _ours(self, frame: Any, code: Any) -> bool:
        return frame is not None and frame.f_code is code and frame.f_locals.get("self") is self.env

    def handle(self, signum: int, frame: Any) -> None:
        env = self.env
        if self.busy:
            self.pending = True
            return
        if self._ours(frame, environment.__enter__.__code__) and env._entered is not None:
            env._deliver_entered(self, signum, frame)  # the tail of __enter__: undone if the handler raises
            return
        if self._ours(frame, environment.__exit__.__code__) and not env._leaving:
            self.pending = True  # __exit__'s first instruction: delivered once it has left
            return
        self.deliver(signum, frame)

    def checkpoint(self) -> None:
        """Where waiting in line may be interrupted: a held interrupt goes
        to the caller's handler here; if it raises (Python's own raises
        KeyboardInterrupt), the line is left and entering undone, if not,
        the wait goes on."""
        if self.pending:
            from . import signals

            self.pending = False
            self.deliver(signals.SIGINT, None)

    def deliver(self, signum: int, frame: Any) -> None:
        from . import signals

        if callable(self.previous):
            self.previous(signum, frame)
        elif self.previous == signals.SIG_DFL:
            signals.signal(signum, signals.SIG_DFL)
            os.kill(os.getpid(), signum)

    def remove(self) -> None:
        """Put the caller's handler back (unless the block changed it)."""
        from . import signals

        if self.installed:
            self.installed = False
            try:
                if signals.getsignal(signals.SIGINT) == self.handle:
                    signals.signal(signals.SIGINT, self.previous)
            except (ValueError, OSError):
                pass

    def release(self) -> None:
        """Done: the caller's handler back, and a held interrupt delivered."""
        from . import signals

        self.busy = False
        self.remove()
        if self.pending:
            self.pending = False
            self.deliver(signals.SIGINT, None)


class environment:
    """This process in a new environment (or, with ``join``, in one of your
    own) with ``gpus`` GPUs, whole or a share of ``gpu_memory`` (bytes, or a
    size such as "8g") of each, or exactly the GPUs ``index``. ``wait``:
    seconds to wait in line for them (``float("inf")``: as long as it
    takes); without it, Error when they cannot be had now. ``for_``: hold
    the GPUs for at most this long (a duration such as ``"2h"``, or seconds;
    as ``genv attach --for``): then they are released, and the work still
    running on them is misplaced. See the module's doc. Use it in a ``with``
    statement."""

    def __init__(self, gpus: Optional[int] = None, gpu_memory: Union[str, int, None] = None,
                 name: Optional[str] = None, wait: Optional[float] = None, index: Optional[Sequence[int]] = None,
                 over_subscribe: bool = False, join: Optional[str] = None,
                 for_: Union[str, float, None] = None) -> None:
        self._settings = _settings(gpus, gpu_memory, name, wait, index, over_subscribe, join, for_)
        self._entered: Optional[Entered] = None
        self._undo: Any = None
        self._guard: Optional[_Guard] = None
        self._leaving = False

    def __enter__(self) -> Environment:
        from . import signals
        from .core import activation, operations

        if self._entered is not None or self._guard is not None:
            raise Error("this environment() block is open already")
        if _cuda_started():
            import warnings

            warnings.warn("CUDA was initialised in this process before genv.sdk.environment(): the GPUs of the "
                          "environment take effect only in processes started from now on", RuntimeWarning,
                          stacklevel=2)
        me = _thread.get_ident()
        self._leaving = False
        guard = self._guard = _Guard(self)
        # Held back in this thread too, so that SIGTERM and SIGHUP wait as
        # well; the caller's mask is in force only while waiting in line.
        mask = signals.pthread_sigmask(signals.SIG_BLOCK, signals.HELD)
        try:
            with _OPEN_LOCK:
                if any(owner != me for owner, _ in _OPEN):
                    raise Error("an environment() block is open in another thread of this process; os.environ is "
                                "the process's, so blocks cannot overlap across threads")
                _OPEN.append([me, self])
            with _quiet():
                entered = operations.enter(_context(), self._settings, os.environ, sleeping=mask,
                                           checkpoint=guard.checkpoint)
            self._undo = activation.apply(entered.plan, os.environ)
            self._entered = entered
            result = Environment(entered.env)
        except BaseException:
            guard.busy = True
            try:
                self._close()
            finally:
                signals.pthread_sigmask(signals.SIG_SETMASK, mask)
                self._guard = None
                guard.release()
            raise
        signals.pthread_sigmask(signals.SIG_SETMASK, mask)
        guard.busy = False
        if guard.pending:  # an interrupt came while entering: the caller's handler has it now
            guard.pending = False
            self._deliver_entered(guard, signals.SIGINT, None)
        return result

    def _deliver_entered(self, guard: _Guard, signum: int, frame: Any) -> None:
        """An interrupt for the caller's handler, once entering is done: if
        it raises (Python's own raises KeyboardInterrupt), entering is
        undone before the exception goes on; if not, the block runs, with
        its environment."""
        try:
            guard.deliver(signum, frame)
        except BaseException:
            self._undo_entering()
            raise

    def _undo_entering(self) -> None:
        """Entering is undone (an interrupt came before the block started;
        its handler delivers it)."""
        self._leave(deliver=False)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self._leaving = True
        self._leave(deliver=True)

    def _leave(self, deliver: bool) -> None:
        """Undo what entering did, the guard holding interrupts back
        meanwhile; then the caller's SIGINT handler back and, with
        ``deliver``, an interrupt held meanwhile delivered."""
        from . import signals

        guard = self._guard
        if guard is not None:
            guard.busy = True
        mask = signals.pthread_sigmask(signals.SIG_BLOCK, signals.HELD)
        try:
            self._close()
        finally:
            signals.pthread_sigmask(signals.SIG_SETMASK, mask)  # an interrupt held back by the mask comes here
            self._guard = None
            if guard is not None:
                if not deliver:
                    guard.pending = False
                guard.release()

    def _close(self) -> None:
        """Undo what entering did, whatever part of it was done (the guard
        holds interrupts back)."""
        from .core import activation, operations

        entered, self._entered = self._entered, None
        undo, self._undo = self._undo, None
        try:
            if undo is not None:
                activation.apply(undo, os.environ)
            if entered is not None:
                with _quiet():
                    operations.leave(_context(), entered)
        finally:
            with _OPEN_LOCK:
                for position in range(len(_OPEN) - 1, -1, -1):
                    if _OPEN[position][1] is self:
                        del _OPEN[position]
                        break


@contextmanager
def lock(timeout: Optional[float] = None) -> Iterator[None]:
    """Hold the lock of each GPU of the current environment (as ``genv lock``),
    waiting for it (at most ``timeout`` seconds, if given). Inside a command
    run by ``genv lock`` (or another ``lock()`` further out), the GPUs it
    holds already are this process's, and it does not wait for them."""
    from .core import turns

    ctx = _context()
    if timeout is not None:
        import math

        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
            raise Error("invalid timeout %r: expected a number of seconds" % (timeout,))
    with _quiet():
        held = turns.hold(ctx, ctx.require_active(), turns.FOREVER if timeout is None else float(timeout))
    try:
        yield
    finally:
        turns.release(held)


def status() -> Dict[str, Any]:
    """The document of ``genv status --format json`` for this process."""
    from .core import listings

    ctx = _context()
    with _quiet():
        listed = listings.status(ctx, deliver=False)
    return {"active": False} if listed is None else listed[0]


def envs() -> List[Dict[str, Any]]:
    """The document of ``genv envs --format json``."""
    from .core import listings

    ctx = _context()
    with _quiet():
        return listings.envs(ctx)[0]


def devices() -> List[Dict[str, Any]]:
    """The document of ``genv devices --format json``."""
    from .core import listings

    ctx = _context()
    with _quiet():
        return listings.devices(ctx)[0]


def ps() -> List[Dict[str, Any]]:
    """The document of ``genv ps --format json``."""
    from .core import listings

    ctx = _context()
    with _quiet():
        return listings.ps(ctx)[0]
