"""Sleeping until something a waiter waits for may have happened.

A request waiting in line (``core.waitline``) needs to look again when the
state changes (a genv command wrote a state file) or when a process that
holds what it waits for ends (a terminal closed or killed changes no file).
The kernel says both: inotify on the state folder (through ctypes: no new
dependency) and a pidfd per watched process (``os.pidfd_open``: Linux 5.3,
Python 3.9), polled together with ``select.poll``. Any user may watch the
shared folder and open another user's pidfd (it grants nothing but the
wake-up). ``complete`` says whether both work here; without them the
caller looks on a short timer instead.

Every descriptor opened here is closed by ``close`` (the SDK waits inside
the user's own process); no signal handler is touched: a signal interrupts
the poll as it would a sleep.
"""

from __future__ import annotations

import os

from .state_names import state_uid

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterable, Tuple

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = 0o4000  # O_NONBLOCK
IN_CLOEXEC = 0o2000000  # O_CLOEXEC
WATCHED = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the folder itself went away: the watch is over

MAX_PIDFDS = 256
"""The most processes watched at once; beyond it the watch is not complete."""


def _inotify(folder: str) -> int:
    """An inotify descriptor watching ``folder`` for state files written,
    renamed or removed; -1 where the system has none."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (ImportError, OSError, AttributeError):
        return -1
    fd = int(init(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        return -1
    if int(add(fd, os.fsencode(folder), WATCHED | IN_ONLYDIR | IN_DONT_FOLLOW)) < 0:
        os.close(fd)
        return -1
    return fd


class Wake:
    """The waiter's alarm clock: ``sleep`` returns when the state folder
    ``folder`` changed (a state file renamed into place or removed), when a
    process given to ``watch`` ended, or when the time is up. Use it in a
    ``with`` statement (or call ``close``)."""

    def __init__(self, folder: str) -> None:
        import select

        self._poll = select.poll()
        self._pidfds: Dict[Tuple[int, str], int] = {}
        self._by_fd: Dict[int, Tuple[int, str]] = {}
        self._pidfd_ok = hasattr(os, "pidfd_open")
        self._too_many = False
        self._inotify = _inotify(folder)
        if self._inotify >= 0:
            self._poll.register(self._inotify, select.POLLIN)

    @property
    def complete(self) -> bool:
        """Whether every change the caller watches wakes it: the folder is
        watched and so is every process it asked for."""
        return self._inotify >= 0 and self._pidfd_ok and not self._too_many

    def watch(self, processes: Iterable[Tuple[int, str]], facts: Any) -> None:
        """Watch exactly these processes (pid, token) for their end: new
        ones get a pidfd, ones no longer asked for are let go. ``facts``
        (``procs``) checks that each pidfd is the process with that token."""
        if not self._pidfd_ok:
            return
        import select

        wanted = set(processes)
        for key in [key for key in self._pidfds if key not in wanted]:
            self._drop(key)
        self._too_many = False
        for key in wanted:
            if key in self._pidfds:
                continue
            if len(self._pidfds) >= MAX_PIDFDS:
                self._too_many = True
                break
            try:
                fd = os.pidfd_open(key[0])
            except ProcessLookupError:
                continue  # gone already: the next look sees it
            except OSError:
                self._pidfd_ok = False  # no pidfds here (an old kernel, a limit): look on a timer
                return
            if not facts.alive(*key):  # the PID was taken by another process since
                os.close(fd)
                continue
            self._pidfds[key] = fd
            self._by_fd[fd] = key
            self._poll.register(fd, select.POLLIN)

    def _drop(self, key: Tuple[int, str]) -> None:
        fd = self._pidfds.pop(key)
        del self._by_fd[fd]
        self._poll.unregister(fd)
        os.close(fd)

    def sleep(self, seconds: float) -> bool:
        """Sleep at most ``seconds``; True when something changed (a state
        file, a watched process ended), False when the time was up. A
        signal whose handler raises (Ctrl-C) ends the sleep with it."""
        woke = False
        for fd, _ in self._poll.poll(max(0, int(seconds * 1000 + 0.999))):
            if fd == self._inotify:
                woke = self._read_events() or woke
            elif fd in self._by_fd:
                self._drop(self._by_fd[fd])  # it ended: its pidfd stays readable, let it go
                woke = True
        return woke

    def _read_events(self) -> bool:
        """Drain the inotify queue: True if a state file changed (or the
        queue overflowed, or the watch ended: then the folder is no longer
        watched, and ``complete`` says so)."""
        import struct

        changed = False
        while True:
            try:
                data = os.read(self._inotify, 65536)
            except BlockingIOError:
                return changed
            except OSError:
                self._stop_inotify()
                return True
            if not data:
                return changed
            at = 0
            while at + 16 <= len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16 : at + 16 + size].rstrip(b"\0")
                at += 16 + size
                if mask & (GONE | IN_Q_OVERFLOW) or state_uid(os.fsdecode(name)) is not None:
                    changed = True
                if mask & GONE:
                    self._stop_inotify()
                    return True

    def _stop_inotify(self) -> None:
        if self._inotify >= 0:
            self._poll.unregister(self._inotify)
            os.close(self._inotify)
            self._inotify = -1

    def close(self) -> None:
        """Let go of every descriptor (idempotent)."""
        for key in list(self._pidfds):
            self._drop(key)
        self._stop_inotify()

    def __enter__(self) -> "Wake":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
