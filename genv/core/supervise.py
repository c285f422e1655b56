"""Start a user's command and wait for it: the one supervisor of ``genv
run`` and ``genv lock`` (and of what starts commands through them: kernels,
``genv ssh``).

The rules, for every supervised command:

- **A signal sent to the supervisor alone** (``kill PID``, a job control
  shell's ``kill %1``, Jupyter's interrupt) is passed on to the command,
  once: SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM,
  SIGWINCH, SIGCONT and the stop signals.
- **A signal the terminal sends** (Ctrl-C, Ctrl-\\, Ctrl-Z, a hang-up)
  reaches the command once, not a second time through the supervisor. In
  the foreground of a job-control shell the command gets a process group of
  its own and the terminal (as a shell gives a job), so the terminal's
  signals go to it alone, and the shell's signals to the job go to the
  supervisor alone, which passes them on (but for a hang-up when the
  terminal went away: the kernel sends that one to the command's group
  itself). Started without job control (a script, cron), the command stays
  in the caller's process group, and a signal from the terminal, which the
  command got too, is not passed on; one sent to the whole group by a
  process outside it reaches the command twice (as ``kill -TERM -PGID``
  would reach a script and its child): run such services with a process
  group, or a session, of their own.
- **Job control works**: when the command stops (Ctrl-Z), the supervisor
  stops with the same signal, so the shell sees the job stopped; ``fg`` and
  ``bg`` continue both (``fg`` gives the terminal back to the command).
- **Signals ignored when the supervisor started** (``nohup``) stay ignored,
  in the supervisor and in the command (SIGCHLD in the command only: the
  supervisor must see its command end). Other signals have their default
  action in the command (SIGPIPE and SIGXFSZ included, which Python ignores).
- **The supervisor ends as the command ended**: its exit status, or, killed
  by a signal, the supervisor dies of the same signal (without a core dump),
  so that a shell loop stops at Ctrl-C as it would for the command itself.

Signals are taken with ``sigwaitinfo`` (blocked, never handled), so none is
lost between two looks and none runs Python code at an awkward moment.
"""

from __future__ import annotations

import os

from .. import signals, spawn
from ..errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, FrozenSet, List, Mapping, Optional, Sequence, Set

FORWARDED = (signals.SIGHUP, signals.SIGINT, signals.SIGQUIT, signals.SIGUSR1, signals.SIGUSR2, signals.SIGALRM,
             signals.SIGTERM, signals.SIGWINCH, signals.SIGCONT, signals.SIGTSTP, signals.SIGTTIN, signals.SIGTTOU)
STOPS = frozenset((signals.SIGTSTP, signals.SIGTTIN, signals.SIGTTOU))
DEFAULTED = (signals.SIGPIPE, signals.SIGXFSZ)  # ignored by Python, default for the command
SI_KERNEL = 0x80  # si_code of a signal the kernel sent (the terminal's ^C), not kill()
SI_USER = 0
NOT_STARTED = 125  # the command never ran (genv gave up before its exec)


def resolve(argv: Sequence[str], path: str) -> str:
    """The program to run, looked up as the command's own PATH will find it:
    a command that does not exist (127) or cannot run (126) is refused
    before anything is held."""
    program = argv[0]
    if "/" in program:
        found: Optional[str] = program
    else:
        found = None
        for folder in path.split(os.pathsep):
            candidate = os.path.join(folder or ".", program)
            if os.path.exists(candidate) and not os.path.isdir(candidate):
                found = candidate
                if os.access(candidate, os.X_OK):
                    break
    if found is None or not os.path.exists(found):
        raise GenvError("cannot run %s: command not found" % program, 127)
    if os.path.isdir(found):
        raise GenvError("cannot run %s: it is a folder" % program, 126)
    if not os.access(found, os.X_OK):
        raise GenvError("cannot run %s: permission denied" % program, 126)
    return found


def _terminal() -> int:
    """The controlling terminal, opened; -1 without one."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return -1


def _foreground(tty: int) -> bool:
    try:
        return tty >= 0 and os.tcgetpgrp(tty) == os.getpgrp()
    except OSError:
        return False


def _hung_up() -> bool:
    """Whether this process's terminal hung up (it went away: the kernel
    took it from every process of the session, /proc/self/stat's tty_nr)."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[4]) == 0
    except (OSError, IndexError, ValueError):
        return False


def _give_terminal(tty: int, group: int) -> None:
    """Make ``group`` the terminal's foreground group (SIGTTOU held: a
    background process may do it then)."""
    mask = signals.pthread_sigmask(signals.SIG_BLOCK, {signals.SIGTTOU})
    try:
        os.tcsetpgrp(tty, group)
    except OSError:
        pass
    finally:
        signals.pthread_sigmask(signals.SIG_SETMASK, mask)


class Child:
    """A supervised command: started at once, or held before its exec
    (``hold``) until ``release`` gives it its environment."""

    def __init__(self, program: str, argv: Sequence[str], environ: Optional[Mapping[str, str]] = None,
                 hold: bool = False, keep_fds: Sequence[int] = ()) -> None:
        self.ignored: FrozenSet[int] = frozenset(
            int(signum) for signum in FORWARDED if signals.getsignal(signum) == signals.SIG_IGN)
        # A SIGCHLD ignored by whoever started us (it survives exec) makes the
        # kernel reap the command unseen: the supervisor takes it back (the
        # command gets it ignored again at its exec, as without genv).
        self.chld_ignored = signals.getsignal(signals.SIGCHLD) == signals.SIG_IGN
        if self.chld_ignored:
            signals.signal(signals.SIGCHLD, signals.SIG_DFL)
        self.tty = _terminal()
        leader = os.getpgrp() == os.getpid()
        self.own_group = leader  # a job of a shell, a service, a kernel: the command gets its own group
        self.takes_terminal = leader and _foreground(self.tty)
        self.wanted: Set[int] = {int(s) for s in FORWARDED if s not in self.ignored} | {int(signals.SIGCHLD)}
        # Blocked from now on: taken by sigwaitinfo in supervise(); the command
        # gets the mask the caller had, and its dispositions reset, at exec.
        self.mask = signals.pthread_sigmask(signals.SIG_BLOCK, self.wanted)
        self.go = -1
        ready = -1
        if hold:
            ready, self.go = os.pipe()
        try:
            self.pid = os.fork()
        except BaseException:
            for fd in (ready, self.go, self.tty):
                if fd >= 0:
                    os.close(fd)
            signals.pthread_sigmask(signals.SIG_SETMASK, self.mask)
            raise
        if self.pid == 0:
            self._exec(program, list(argv), environ, ready, keep_fds)  # never returns
        if ready >= 0:
            os.close(ready)
        self.group = self.pid if self.own_group else os.getpgrp()
        if self.own_group:
            try:
                os.setpgid(self.pid, self.pid)  # also here: no race with a signal sent right away
            except OSError:
                pass
        if not hold:
            self._start()

    def _exec(self, program: str, argv: List[str], environ: Optional[Mapping[Any, Any]], ready: int,
              keep_fds: Sequence[int]) -> None:
        """In the child: wait for the go (if held), reset signals, exec."""
        try:
            if self.own_group:
                os.setpgid(0, 0)
            if ready >= 0:
                os.close(self.go)
                chunks = []
                while True:
                    chunk = os.read(ready, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                data = b"".join(chunks)
                if not data.startswith(b"go\0"):
                    os._exit(NOT_STARTED)  # the supervisor gave up, or died, before the command could run
                environ = dict(item.split(b"=", 1) for item in data[3:].split(b"\0") if b"=" in item)
            for signum in FORWARDED + DEFAULTED:
                signals.signal(signum, signals.SIG_IGN if signum in self.ignored else signals.SIG_DFL)
            if self.chld_ignored:
                signals.signal(signals.SIGCHLD, signals.SIG_IGN)
            for fd in keep_fds:
                os.set_inheritable(fd, True)
            signals.pthread_sigmask(signals.SIG_SETMASK, self.mask)
            os.execve(program, argv, dict(environ) if environ is not None else os.environ)
        except OSError as error:
            os.write(2, ("genv: cannot run %s: %s\n" % (argv[0], error.strerror)).encode("utf-8", "replace"))
            os._exit(127 if isinstance(error, FileNotFoundError) else 126)
        except BaseException:
            os._exit(NOT_STARTED)
        os._exit(NOT_STARTED)  # pragma: no cover

    def _start(self) -> None:
        if self.takes_terminal:
            _give_terminal(self.tty, self.pid)

    def release(self, environ: Mapping[str, str]) -> None:
        """Let the held command run, with ``environ``."""
        data = b"go\0" + b"\0".join(os.fsencode(key) + b"=" + os.fsencode(value) for key, value in environ.items())
        view = memoryview(data)
        self._start()
        try:
            while view:
                view = view[os.write(self.go, view):]
        finally:
            os.close(self.go)
            self.go = -1

    def abandon(self) -> None:
        """The held command must never run: it is stopped and reaped."""
        if self.go >= 0:
            os.close(self.go)
            self.go = -1
        spawn.kill_group(self.pid)
        self.close()

    def close(self) -> None:
        if self.tty >= 0:
            if self.takes_terminal:
                try:
                    if os.tcgetpgrp(self.tty) == self.pid:
                        _give_terminal(self.tty, os.getpgrp())
                except OSError:
                    pass
            os.close(self.tty)
            self.tty = -1

    # -- supervising ----------------------------------------------------------------

    def _send(self, signum: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _reached_command(self, signum: int, code: int) -> bool:
        """Whether the command got this signal itself, so that it is not
        passed on: the terminal's (the kernel's) signals, when the command
        shares our process group (no job control) or, with a terminal of its
        own, a hang-up: the kernel sends the command's group one when the
        session's leader (the shell) exits, after the shell passed its own
        on to the job (us)."""
        if not self.own_group:
            return code == SI_KERNEL  # the terminal's, to the whole foreground group
        return self.takes_terminal and signum == signals.SIGHUP and _hung_up()

    def _stop_too(self, signum: int) -> None:
        """The command stopped: stop the supervisor with the same signal, so
        that the shell sees the job stopped; then, continued, continue it."""
        if signum not in STOPS:
            os.kill(os.getpid(), signals.SIGSTOP)  # stops here until SIGCONT
            return
        # Sent while blocked, it merges with one the terminal may have sent
        # us too; unblocked, it is delivered (once): we stop until SIGCONT.
        signals.signal(signum, signals.SIG_DFL)
        os.kill(os.getpid(), signum)
        signals.pthread_sigmask(signals.SIG_UNBLOCK, {signum})
        signals.pthread_sigmask(signals.SIG_BLOCK, {signum})
        # Continued: SIGCONT stays pending for the loop, which passes it on.

    def _continued(self) -> None:
        if self.takes_terminal and _foreground(self.tty):
            _give_terminal(self.tty, self.pid)
        self._send(signals.SIGCONT)

    def supervise(self) -> int:
        """Wait for the command (see the module's rules); its wait status."""
        flags = os.WNOHANG | os.WUNTRACED | os.WCONTINUED
        try:
            while True:
                while True:
                    done, status = os.waitpid(self.pid, flags)
                    if done != self.pid:
                        break
                    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                        return status
                    if os.WIFSTOPPED(status):
                        self._stop_too(os.WSTOPSIG(status))
                info = signals.sigwaitinfo(self.wanted)
                signum, code = info.si_signo, info.si_code
                if signum == signals.SIGCHLD:
                    continue
                if signum == signals.SIGCONT:
                    self._continued()
                    continue
                if self._reached_command(signum, code):
                    continue
                self._send(signum)
        finally:
            self.close()


def ended(status: int) -> int:
    """End as the command ended: its exit status; for a signal, die of it
    (core dumps off), or, if that does not end this process, 128 + N."""
    if not os.WIFSIGNALED(status):
        return os.WEXITSTATUS(status)
    died = os.WTERMSIG(status)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass
    try:
        signals.signal(died, signals.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL: its action cannot be changed, nor blocked or ignored
    try:
        signals.pthread_sigmask(signals.SIG_UNBLOCK, {died})
        os.kill(os.getpid(), died)
    except (OSError, ValueError):
        pass
    return 128 + died

