"""genv ssh: GPUs wherever they are free. Asks the hosts for their GPUs,
picks one where the request fits now, and runs a command (or a login
shell) there in an environment of that size, freed when it ends.

On the chosen host it takes two steps, over one reused ssh connection:

1. **Hold.** ``genv run --no-load --gpus N ... -- sh -c HOLDER`` attaches
   the GPUs and prints the environment's id and GPUs on stdout, then waits
   for its stdin to close. No line means the GPUs could not be had there
   (a race lost, a line of waiters): the next host that fits is tried. The
   command has not run anywhere yet.
2. **Run.** ``ssh [-t] HOST genv run --id ID -- COMMAND`` joins that
   environment; its exit status is COMMAND's. It is never retried. When it
   ends, genv ssh closes the holder's stdin, and the environment (with its
   GPUs) goes with its last terminal.

Which host: among those where the request fits now (the placement rules of
``genv attach``, from each host's ``genv devices``), the one left with the
fewest whole GPUs free after it, so that whole GPUs stay free where they
are; a tie goes to the host named first.
"""

from __future__ import annotations

import os

from .. import options, remote, spawn
from ..errors import GenvError, UsageError
from ..report import warn as err

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

OPTIONS: options.Spec = {"--gpus": options.VALUE, "--gpu-memory": options.VALUE, "--name": options.VALUE,
                         "-t": options.FLAG}
HOLDER = 'printf "%s %s\\n" "$GENV_ENVIRONMENT_ID" "${GENV_ATTACHED_GPUS-}" && exec cat >/dev/null'
"""What holds the environment on the chosen host until genv ssh is done."""


def complete(words: List[str]) -> List[str]:
    from ._hosts import complete as complete_listing

    return [] if "--" in words else complete_listing(words, OPTIONS, {})


# --- choosing a host (pure) -------------------------------------------------------


class Fit:
    """A host where the request fits now: the GPUs it would take, and how
    many whole GPUs it would have free after."""

    __slots__ = ("position", "dest", "indices", "whole_after")

    def __init__(self, position: int, dest: str, indices: List[int], whole_after: int) -> None:
        self.position, self.dest, self.indices, self.whole_after = position, dest, indices, whole_after


def _gpus(rows: Sequence[Dict[str, Any]]) -> List[Tuple[int, Optional[int], List[Optional[int]], bool]]:
    """A host's devices listing as ``allocate.place`` reads it (MiB to bytes)."""
    gpus = []
    for row in rows:
        total = row["memory_total"] << 20 if row["memory_total"] is not None else None
        shares = [holder["memory"] << 20 if holder["memory"] is not None else None for holder in row["environments"]]
        # As genv attach: a process outside every environment that holds memory keeps the GPU busy.
        busy = any(process["managed"] is False and process["memory"] != 0 for process in row["processes"])
        gpus.append((row["index"], total, shares, busy))
    return gpus


def free_for(rows: Sequence[Dict[str, Any]], memory: Optional[int]) -> List[int]:
    """The GPUs of a host that could take one GPU of the request now."""
    from ..allocate import Request, place

    return [index for index, total, shares, busy in _gpus(rows)
            if place([(index, total, shares, busy)], Request(1, memory))]


def fits(answers: Sequence[remote.Answer], count: int, memory: Optional[int]) -> List[Fit]:
    """The hosts where ``count`` GPUs (whole, or shares of ``memory`` bytes)
    fit now, best first: the fewest whole GPUs free after, then the order
    given."""
    from ..allocate import Request, place

    found = []
    for position, answer in enumerate(answers):
        if answer.error is not None:
            continue
        gpus = _gpus(answer.value)
        whole = {index for index, _, shares, busy in gpus if not shares and not busy}
        chosen = place(gpus, Request(count, memory)) if count else []
        if count and not chosen:
            continue
        found.append(Fit(position, answer.host.dest, chosen, len(whole - set(chosen))))
    found.sort(key=lambda fit: (fit.whole_after, fit.position))
    return found


# --- holding and running ------------------------------------------------------------


class Held:
    """The holder on a host: its ssh process, the pipe that keeps it (its
    stdin) and its output pipes (kept open, so that a late message from the
    holder cannot end it early)."""

    def __init__(self, pid: int, fds: Sequence[int], eid: str, gpus: str) -> None:
        self.pid, self.fds, self.eid, self.gpus = pid, list(fds), eid, gpus

    def release(self, timeout: float) -> None:
        """Close the holder's stdin (its environment goes with it) and wait
        for it to end, at most ``timeout`` seconds."""
        os.close(self.fds[0])
        if _reap(self.pid, timeout) is None:
            spawn.kill_group(self.pid)
        for fd in self.fds[1:]:
            os.close(fd)


def _reap(pid: int, timeout: float) -> Optional[int]:
    """The wait status of ``pid`` once it ends, or None if it is still
    running after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        done, wait_status = spawn.waitpid(pid, os.WNOHANG)
        if done:
            return wait_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


class _Pipes:
    """Output pipes read as their data comes: what each gave so far, and
    which are still open."""

    def __init__(self, *fds: int) -> None:
        import select

        self.got: Dict[int, bytes] = {fd: b"" for fd in fds}
        self.open = set(fds)
        self.poller = select.poll()
        for fd in fds:
            self.poller.register(fd, select.POLLIN | select.POLLHUP)

    def read_until(self, enough: Callable[[], bool], deadline: float) -> bool:
        """Read until ``enough()`` (True) or ``deadline`` on the monotonic
        clock (False)."""
        import time

        while not enough():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd, _ in self.poller.poll(int(left * 1000) + 1):
                data = os.read(fd, 65536)
                if data:
                    self.got[fd] += data
                else:
                    self.poller.unregister(fd)
                    self.open.discard(fd)
        return True


def _words(count: int, memory: Optional[int], name: Optional[str]) -> List[str]:
    words = ["run", "--no-load", "--gpus", str(count)]
    if memory is not None:
        words += ["--gpu-memory", "%db" % memory]
    if name is not None:
        words += ["--name", name]
    return words + ["--", "sh", "-c", HOLDER]


def hold(transport: remote.Transport, host: remote.Host, words: List[str]) -> Tuple[Optional[Held], str]:
    """Start the holder on ``host``: the held environment, or None and why
    not (its GPUs could not be had there, or the host failed)."""
    import time

    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = spawn.start(transport.argv(host, words), stdin_r, out_w, err_w, group=True)
    except OSError as error:
        for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        return None, "cannot run %s: %s" % (transport.command[0], error.strerror or error)
    for fd in (stdin_r, out_w, err_w):
        os.close(fd)
    done = False  # the holder is kept, or reaped: nothing to clean up
    try:
        pipes = _Pipes(out_r, err_r)
        if not pipes.read_until(lambda: b"\n" in pipes.got[out_r] or out_r not in pipes.open,
                                time.monotonic() + transport.timeout):
            return None, "no answer within %g s (GENV_SSH_TIMEOUT)" % transport.timeout
        output = pipes.got[out_r]
        line = output.split(b"\n", 1)[0].decode("utf-8", "replace").split()
        # The id as genv made it there: a PID, or a PID and a suffix (4242-2).
        if b"\n" in output and len(line) in (1, 2) and line[0].isprintable():
            done = True
            return Held(pid, (stdin_w, out_r, err_r), line[0], line[1] if len(line) == 2 else ""), ""
        # No line: it ended (or will) without the GPUs; what it said is why.
        os.close(stdin_w)
        stdin_w = -1
        rest = time.monotonic() + transport.timeout
        pipes.read_until(lambda: err_r not in pipes.open, rest)
        wait_status = _reap(pid, max(0.0, rest - time.monotonic()))
        if wait_status is None:
            spawn.kill_group(pid)
        done = True
        status = spawn.status_of(wait_status) if wait_status is not None else 1
        return None, remote.reason(status, pipes.got[err_r], transport.genv(host))
    finally:
        if not done:
            if stdin_w >= 0:
                os.close(stdin_w)
            spawn.kill_group(pid)
        if not done or stdin_w < 0:  # (a holder kept keeps its pipes)
            os.close(out_r)
            os.close(err_r)


def run_there(argv: List[str]) -> int:
    """Run ssh under genv's one supervisor (genv.core.supervise: the
    terminal's signals reach ssh once, signals sent to genv ssh are passed
    on, Ctrl-Z stops both); ssh's wait status."""
    from ..core.supervise import Child, resolve

    program = resolve(argv, os.environ.get("PATH", ""))
    return Child(program, argv).supervise()


def login_shell(line: str) -> str:
    """The remote line that runs ``line`` (genv run ... --) with the user's
    shell there: a login shell reads the profile (PATH included), then runs
    genv run, which starts the shell again, interactive, with the
    environment's variables (a login shell would reset PATH, and the
    nvidia-smi shim with it, from /etc/profile)."""
    import shlex

    return '"$SHELL" -l -c %s' % shlex.quote(line + ' "$SHELL"')


def main(argv: List[str]) -> int:
    from ._hosts import ask

    hosts, rest = remote.split_options(argv)
    command: Optional[List[str]] = None
    if "--" in rest:
        at = rest.index("--")
        command = rest[at + 1:]
        rest = rest[:at]
        if not command:
            raise UsageError("no command given after --")
    opts, _ = options.parse(rest, OPTIONS, 0)
    config = options.configuration(opts)
    count, memory, name = config.get("gpus", 1), config.get("gpu_memory"), config.get("name")
    if hosts is None:
        hosts = remote.all_hosts("no --host given")
    transport, answers = ask("devices", hosts, messages=False)
    words = _words(count, memory, name)
    lost: Dict[str, str] = {}
    held: Optional[Held] = None
    chosen: Optional[remote.Host] = None
    for fit in fits(answers, count, memory):
        host = answers[fit.position].host
        held, why = hold(transport, host, words)
        if held is not None:
            chosen = host
            break
        lost[host.dest] = why
        err("%s: %s" % (host.dest, why))
    if held is None or chosen is None:
        raise GenvError(_none_fits(answers, count, memory, lost))
    try:
        if held.gpus:
            err("%s: environment %s with GPU%s %s" % (chosen.dest, held.eid, "s" if "," in held.gpus else "",
                                                     held.gpus))
        else:
            err("%s: environment %s, without GPUs" % (chosen.dest, held.eid))
        tty = "-t" in opts or (command is None and os.isatty(0))
        ssh = transport.argv(chosen, ["run", "--id", held.eid, "--"] + (command or []), tty=tty)
        if command is None:
            ssh[-1] = login_shell(ssh[-1])
        status = run_there(ssh)
    finally:
        held.release(transport.timeout)
    from ..core.supervise import ended

    return ended(status)  # as the command there ended (ssh passes its status on)


def _none_fits(answers: Sequence[remote.Answer], count: int, memory: Optional[int], lost: Dict[str, str]) -> str:
    """The message when no host could take the request: each host's GPUs
    free for it (on stderr, one line a host), then the summary."""
    from ..sizes import format_size

    what = "%d GPU%s" % (count, "" if count == 1 else "s") + (
        " with %s each" % format_size(memory) if memory is not None else "")
    for answer in answers:
        dest = answer.host.dest
        if answer.error is not None or dest in lost:
            continue  # said already
        free = free_for(answer.value, memory)
        err("%s: %d of %d GPU%s free%s" % (dest, len(free), len(answer.value), "" if len(answer.value) == 1 else "s",
                                          (" (%s)" % ",".join(map(str, free))) if free else ""))
    return "no host can take %s now" % what
