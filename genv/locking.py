"""Waiting for a ``flock`` without hanging silently.

Any local user can ``flock`` the state folder (or a GPU's lock file) and
keep it. So a lock is awaited for at most a given time. After a second the
wait is announced on stderr with the holder's PID and user, read from
``/proc/locks``; when the time is up the command fails saying so.

In a command's own process (main thread) the wait is a blocking ``flock``
that a timer (SIGALRM) interrupts: the kernel hands the lock over the moment
it is released, and nothing polls. Inside somebody else's process (the SDK,
any thread) genv must not touch signal handlers or timers, so it polls,
a few milliseconds apart at first, at most a tenth of a second later; so it
does where SIGALRM is blocked (``genv run``'s supervisor holds it back for
its command), as no timer could interrupt the wait.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Optional, Tuple

DEFAULT_TIMEOUT = 10.0
ANNOUNCE_AFTER = 1.0


class LockTimeout(GenvError):
    pass


class _Tick(Exception):
    pass


def timeout_from_env(default: float = DEFAULT_TIMEOUT) -> float:
    from .sizes import env_seconds

    return env_seconds("GENV_LOCK_TIMEOUT", default, hint="0 = do not wait")


def holder(fd: int) -> Optional[Tuple[int, Optional[int]]]:
    """(pid, uid) of a process holding a lock on the file ``fd`` is open on,
    from /proc/locks; None if it cannot be told."""
    info = os.fstat(fd)
    wanted = "%02x:%02x:%d" % (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    try:
        with open("/proc/locks", "rb") as handle:
            lines = handle.read(1 << 20).decode("ascii", "replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->":  # "->": a waiter, not a holder
            continue
        if parts[5] == wanted and parts[4].isdigit():
            from .procs import processes

            pid = int(parts[4])
            return pid, processes().uid(pid)
    return None


def describe_holder(fd: int, user: Callable[[int], str]) -> str:
    found = holder(fd)
    if found is None:
        return "another process"
    pid, uid = found
    return "pid %d (%s)" % (pid, user(uid) if uid is not None else "unknown user")


def acquire(fd: int, what: str, timeout: float, user: Callable[[int], str], announce: bool = True,
            shared: bool = False, announce_after: float = ANNOUNCE_AFTER, timer: bool = True) -> None:
    """Take an exclusive (or shared) flock on ``fd`` within ``timeout``
    seconds (``inf``: as long as it takes), or raise LockTimeout naming the
    holder. With ``announce``, the wait is said on stderr after
    ``announce_after`` seconds. ``timer``: the process is genv's own and
    may use SIGALRM (otherwise the wait polls)."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
    start = time.monotonic()
    deadline = start + timeout
    announced = False
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise LockTimeout(
                "gave up after %g s waiting for %s, held by %s; try again, or set GENV_LOCK_TIMEOUT to wait "
                "longer" % (timeout, what, describe_holder(fd, user))
            )
        if announce and not announced and now - start >= announce_after:
            from .report import warn

            warn("waiting for %s, held by %s" % (what, describe_holder(fd, user)))
            announced = True
        until = deadline if (announced or not announce) else min(deadline, start + announce_after)
        if _wait(fd, mode, min(until - now, 3600.0), timer):
            return


def _poll(fd: int, mode: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


def _wait(fd: int, mode: int, seconds: float, timer: bool) -> bool:
    """Try to take the lock for up to ``seconds``; True if taken."""
    import threading

    if not timer or threading.current_thread() is not threading.main_thread():
        return _poll(fd, mode, seconds)
    import signal

    if signal.SIGALRM in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        # Held back (genv run's supervisor takes it for its command, with
        # sigwaitinfo): a timer could never interrupt flock.
        return _poll(fd, mode, seconds)
    waiting = [True]

    def tick(signum: int, frame: Any) -> None:
        # Only while blocked in flock: a late tick must not escape. (One that
        # lands just after flock returned is harmless: the caller tries again
        # and flock on a lock this descriptor holds succeeds at once.)
        if waiting[0]:
            raise _Tick()

    previous = signal.signal(signal.SIGALRM, tick)
    old_timer = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        fcntl.flock(fd, mode)
        waiting[0] = False
        return True
    except _Tick:
        return False
    finally:
        waiting[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *old_timer)
