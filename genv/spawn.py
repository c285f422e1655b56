"""Running nvidia-smi without ``import subprocess``.

``subprocess`` pulls in ``threading``, ``selectors``, ``locale`` and more:
measured, about as much as a second interpreter start, paid by every command
that asks nvidia-smi something (``ps``, ``devices``, ``attach``, the shim's
filter). ``os.posix_spawn`` with two pipes and ``select.poll`` does the same
job for the few calls genv makes: nvidia-smi (``run``, ``run_all``: side by
side, the first failure is the answer) and ssh to other hosts (``run_each``:
side by side, each on its own; ``start`` for genv ssh).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union


class Timeout(OSError):
    """The program did not finish in time (it was killed)."""


class TooLong(OSError):
    """The program wrote more than it was allowed to (it was killed)."""


def which(program: str) -> Optional[str]:
    """The path a shell would run for ``program``: itself if it names a
    path (has a ``/``), else the first ``PATH`` entry (an empty one is the
    current folder) that holds it; None unless that is a regular file this
    process may execute. ``run`` and ``start`` search nothing: pass them this."""
    if "/" in program:
        candidates = [program]
    else:
        candidates = [os.path.join(folder or ".", program) for folder in os.environ.get("PATH", "").split(os.pathsep)]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _spawn(argv: Sequence[str], stdout: int, stderr: int, group: bool = False) -> int:
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, stdout, 1)]
    if stderr >= 0:
        actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
    if group:  # a process group of its own: the terminal's ^C does not reach it, a kill reaches its children
        return os.posix_spawn(argv[0], list(argv), dict(os.environ), file_actions=actions, setpgroup=0)
    return os.posix_spawn(argv[0], list(argv), dict(os.environ), file_actions=actions)


def waitpid(pid: int, flags: int) -> Tuple[int, int]:
    """``os.waitpid``; a child the kernel reaped itself (this process was
    started with SIGCHLD ignored, which survives exec: its status is lost)
    counts as ended with 0, as Python's subprocess takes it."""
    try:
        return os.waitpid(pid, flags)
    except ChildProcessError:
        return pid, 0


def kill_group(pid: int) -> None:
    """SIGKILL a started, not yet reaped child (its process group, which it
    leads; else itself) and reap it."""
    try:
        os.killpg(pid, 9)  # SIGKILL
    except OSError:
        try:
            os.kill(pid, 9)  # not reaped yet, so still this program
        except OSError:
            pass
    waitpid(pid, 0)


def status_of(wait_status: int) -> int:
    """A return code as subprocess gives it: negative for a signal."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def run(argv: Sequence[str], timeout: float = 60.0, capture_stderr: bool = True) -> Tuple[int, bytes, bytes]:
    """Run ``argv`` (a path, not searched on PATH: see ``which``) with stdin from /dev/null;
    its return code and what it wrote on stdout and stderr. Raises OSError
    if it cannot be started, Timeout if it runs longer than ``timeout``."""
    result = run_all([argv], timeout, capture_stderr)[0]
    assert result is not None  # (only a sibling's failure leaves None)
    return result


def run_all(argvs: Sequence[Sequence[str]], timeout: float = 60.0,
            capture_stderr: bool = True) -> List[Optional[Tuple[int, bytes, bytes]]]:
    """``run`` for several programs at once (they run side by side): their
    results in the same order. When one fails (a non-zero status), those
    still running are killed and their results are None: the failure is the
    answer. If one cannot be started, or they run longer than ``timeout``
    (waiting for their exit included), those started are killed and reaped.
    Only programs not yet reaped are signalled (a reaped one's PID may be
    another process's by then), through their pidfds where there are."""
    import select
    import time

    pids: List[int] = []
    fds: List[Tuple[int, int]] = []  # per program: stdout and stderr read ends (-1: none)
    pidfds: Dict[int, int] = {}  # pidfd -> its program's position
    unreaped: Dict[int, int] = {}  # position -> PID: started and not yet waited for

    def reap(position: int, flags: int) -> Tuple[int, int]:
        # (Reaped by the system, SIGCHLD ignored: no longer ours to signal.)
        done, wait_status = waitpid(pids[position], flags)
        if done:
            del unreaped[position]
        return done, wait_status

    try:
        for argv in argvs:
            out_r, out_w = os.pipe()
            fds.append((out_r, -1))
            err_w = -1
            try:
                if capture_stderr:
                    err_r, err_w = os.pipe()
                    fds[-1] = (out_r, err_r)
                pids.append(_spawn(argv, out_w, err_w))
                unreaped[len(pids) - 1] = pids[-1]
            finally:
                os.close(out_w)
                if err_w >= 0:
                    os.close(err_w)
            if hasattr(os, "pidfd_open"):  # Linux >= 5.3: its exit can be polled for, with the time-out
                try:
                    pidfds[os.pidfd_open(pids[-1])] = len(pids) - 1
                except OSError:
                    pass
        chunks: Dict[int, List[bytes]] = {fd: [] for pair in fds for fd in pair if fd >= 0}
        poller = select.poll()
        for fd in list(chunks) + list(pidfds):
            poller.register(fd, select.POLLIN | select.POLLHUP)
        waiting = set(chunks) | set(pidfds)
        unread = set(chunks)  # pipes not read to their end
        statuses: Dict[int, int] = {}  # position -> wait status
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("timed out after %g s" % timeout)
            for fd, _ in poller.poll(int(left * 1000) + 1):
                if fd in pidfds:
                    poller.unregister(fd)
                    waiting.discard(fd)
                    position = pidfds[fd]
                    done, wait_status = reap(position, os.WNOHANG)
                    if done:
                        statuses[position] = wait_status
                        if status_of(wait_status) != 0:
                            waiting.clear()  # the answer is this failure: stop the others
                            break
                    continue
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    waiting.discard(fd)
                    unread.discard(fd)
        failed = any(status_of(wait_status) != 0 for wait_status in statuses.values())
        results: List[Optional[Tuple[int, bytes, bytes]]] = []
        for position, (pid, (out_r, err_r)) in enumerate(zip(pids, fds)):
            if position not in statuses:
                if failed:
                    results.append(None)  # stopped because another one failed (killed below)
                    continue
                statuses[position] = reap(position, 0)[1]
            for fd in (out_r, err_r):
                if fd in unread:
                    chunks[fd] += _drain(fd)  # what an exited program left in its pipe
            results.append((status_of(statuses[position]), b"".join(chunks[out_r]),
                            b"".join(chunks.get(err_r, []))))
        return results
    finally:
        if unreaped:  # left running by a failure, an error or a time-out
            _kill(unreaped, {position: fd for fd, position in pidfds.items()})
        for fd in list(pidfds) + [fd for pair in fds for fd in pair]:
            if fd >= 0:
                os.close(fd)


def _kill(unreaped: Dict[int, int], pidfds: Dict[int, int]) -> None:
    """SIGKILL and reap children not yet reaped (position -> PID; a pidfd
    for some positions). A pidfd reaches its process or none; without one,
    the PID of a child not yet reaped cannot have been given to another
    process (a zombie keeps it), so ``kill`` is safe there."""
    from . import signals

    send = getattr(signals, "pidfd_send_signal", None)
    for position, pid in unreaped.items():
        try:
            if position in pidfds and send is not None:
                send(pidfds[position], signals.SIGKILL)
            else:
                os.kill(pid, signals.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass


def run_each(argvs: Sequence[Sequence[str]], timeout: float,
             limit: int = 64 << 20) -> List[Union[Tuple[int, bytes, bytes], OSError]]:
    """Several programs side by side, each on its own (``run_all`` stops the
    others at the first failure; here one failure never touches the
    others): for each, its return code, stdout and stderr, or the OSError
    that ended it: it could not be started, it was still running after
    ``timeout`` seconds (Timeout), or it wrote more than ``limit`` bytes
    (TooLong). Each runs in a process group of its own, killed as a whole
    when it runs too long (with what it started: an ssh's proxy command)."""
    import select
    import time

    count = len(argvs)
    results: List[Union[Tuple[int, bytes, bytes], OSError, None]] = [None] * count
    pids: Dict[int, int] = {}  # position -> PID, while not reaped
    pipes: Dict[int, Tuple[int, int]] = {}  # read end -> (position, 1 for stdout or 2 for stderr)
    chunks: Dict[Tuple[int, int], List[bytes]] = {}
    sizes = [0] * count
    pidfds: Dict[int, int] = {}  # position -> pidfd, while not reaped
    poller = select.poll()
    deadline = time.monotonic() + timeout

    def close_pipes(position: int) -> None:
        for fd in [fd for fd, (owner, _) in pipes.items() if owner == position]:
            poller.unregister(fd)
            os.close(fd)
            del pipes[fd]

    def forget(position: int) -> None:
        del pids[position]
        pidfd = pidfds.pop(position, None)
        if pidfd is not None:
            poller.unregister(pidfd)
            os.close(pidfd)

    def finish(position: int, wait_status: int) -> None:
        forget(position)
        for fd in [fd for fd, (owner, _) in pipes.items() if owner == position]:
            chunks[pipes[fd]] += _drain(fd)  # what it left in its pipes (a child may hold them open)
        close_pipes(position)
        results[position] = (status_of(wait_status), b"".join(chunks[(position, 1)]),
                             b"".join(chunks[(position, 2)]))

    def stop(position: int, error: OSError) -> None:
        kill_group(pids[position])
        forget(position)
        close_pipes(position)
        results[position] = error

    try:
        for position, argv in enumerate(argvs):
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            try:
                pids[position] = _spawn(argv, out_w, err_w, group=True)
            except OSError as error:
                os.close(out_r)
                os.close(err_r)
                results[position] = error
                continue
            finally:
                os.close(out_w)
                os.close(err_w)
            for fd, stream in ((out_r, 1), (err_r, 2)):
                pipes[fd] = (position, stream)
                chunks[(position, stream)] = []
                poller.register(fd, select.POLLIN | select.POLLHUP)
            if hasattr(os, "pidfd_open"):  # Linux >= 5.3: its exit can be polled for
                try:
                    pidfd = os.pidfd_open(pids[position])
                except OSError:
                    pass
                else:
                    pidfds[position] = pidfd
                    poller.register(pidfd, select.POLLIN)
        while pids:
            left = deadline - time.monotonic()
            if left <= 0:
                for position in list(pids):
                    stop(position, Timeout("timed out after %g s" % timeout))
                break
            # Without pidfds, exits are looked for every 20 ms.
            wait_ms = int(left * 1000) + 1 if len(pidfds) == len(pids) else min(20, int(left * 1000) + 1)
            for fd, _ in poller.poll(wait_ms):
                if fd not in pipes:
                    continue  # a pidfd (exits are collected below), or a pipe closed earlier in this round
                position, stream = pipes[fd]
                data = os.read(fd, 65536)
                if not data:
                    poller.unregister(fd)
                    os.close(fd)
                    del pipes[fd]
                    continue
                chunks[(position, stream)].append(data)
                sizes[position] += len(data)
                if sizes[position] > limit and position in pids:
                    stop(position, TooLong("wrote more than %d bytes" % limit))
            for position in list(pids):
                done, wait_status = waitpid(pids[position], os.WNOHANG)
                if done:
                    finish(position, wait_status)
        return [result if result is not None else Timeout("not run") for result in results]
    finally:
        for position in list(pids):  # left running by an error (or ^C)
            stop(position, Timeout("stopped"))
        for fd in list(pipes):
            os.close(fd)


def _drain(fd: int) -> List[bytes]:
    """What is left in a pipe whose writer exited, without blocking (a
    process it left behind may hold the pipe open)."""
    os.set_blocking(fd, False)
    found = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not data:
            break
        found.append(data)
    return found


def start(argv: Sequence[str], stdin: int = -1, stdout: int = -1, stderr: int = -1, group: bool = False,
          default: Sequence[int] = ()) -> int:
    """Start ``argv`` (a path: see ``which``) with these descriptors as its standard
    streams (-1: this process's own); ``group``: in a process group of its
    own; ``default``: signals it gets with their default action (those this
    process ignores would stay ignored). Its PID: wait for it with ``wait``."""
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate((stdin, stdout, stderr)) if fd >= 0]
    extra: Dict[str, object] = {"setsigdef": tuple(default)} if default else {}
    if group:
        extra["setpgroup"] = 0
    return os.posix_spawn(argv[0], list(argv), dict(os.environ), file_actions=actions,
                          **extra)  # type: ignore[arg-type]


def stream(argv: Sequence[str]) -> Tuple[int, int]:
    """Start ``argv`` with its stdout on a pipe (stderr as ours); its PID and
    the read end of the pipe."""
    out_r, out_w = os.pipe()
    try:
        pid = _spawn(argv, out_w, -1)
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
    return pid, out_r


def wait(pid: int) -> int:
    """The return code of a process started by ``stream``."""
    return status_of(waitpid(pid, 0)[1])


def lines(fd: int) -> Iterator[bytes]:
    """The lines read from ``fd``, as they come (the last one may lack its
    newline)."""
    return (line for line in rounds(fd, marks=False) if line is not None)


def rounds(fd: int, marks: bool = True) -> Iterator[Optional[bytes]]:
    """``lines``, and (with ``marks``) None after the last line of each
    burst: where everything written so far has been read and the pipe is
    empty (nvidia-smi paused between two rounds of a loop)."""
    poller = None
    if marks:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
    pending = b""
    fresh = False  # lines given since the last None
    while True:
        if fresh and not pending and poller is not None and not poller.poll(0):
            fresh = False
            yield None
        data = os.read(fd, 65536)
        if not data:
            break
        pending += data
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            fresh = True
            yield line + b"\n"
    if pending:
        yield pending

