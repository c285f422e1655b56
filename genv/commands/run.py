"""genv run: run a command in an environment of its own, that lives exactly
as long as the command (for scripts, cron jobs, notebooks' kernels)."""

from __future__ import annotations

import os
import signal
import sys

from .. import environments, project
from ..cli import Context, complete_options, parse
from ..errors import GenvError, UsageError
from ..gpus import parse_count
from . import _terminal as terminal
from .attach import _argv, _indices, _seconds

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

OPTIONS = {"--gpus": True, "--gpu-memory": True, "--name": True, "--index": True, "--over-subscribe": False,
           "-o": False, "--wait": True, "--id": True, "--no-load": False}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent (the terminal's ^C), not kill()


def complete(words: List[str]) -> List[str]:
    if "--" in words:
        return []
    from ..cli import env_ids

    return complete_options(words, OPTIONS, {"--id": env_ids}) + ["--"]


def split(argv: List[str]) -> Tuple[Dict[str, Any], List[str]]:
    if "--" not in argv:
        raise UsageError("put the command after --: genv run [OPTIONS] -- COMMAND [ARGS...]")
    at = argv.index("--")
    opts, _ = parse(_argv(argv[:at]), OPTIONS, 0)
    command = argv[at + 1:]
    if not command:
        raise UsageError("no command given after --")
    return opts, command


def settings(opts: Dict[str, Any]) -> terminal.Settings:
    """The configuration from the options; with none of them (and not
    joining), the project's saved configuration, as on activate."""
    from ..sizes import parse_size

    config: Dict[str, Any] = {}
    if "--gpus" in opts:
        config["gpus"] = parse_count(opts["--gpus"], "GPU count")
    if "--gpu-memory" in opts:
        config["gpu_memory"] = parse_size(opts["--gpu-memory"], "GPU memory")
    if "--name" in opts:
        config["name"] = environments.check_text(opts["--name"], "name")
    indices = _indices(opts["--index"]) if "--index" in opts else None
    join = environments.check_text(opts["--id"], "environment id") if "--id" in opts else None
    if join is None and "--no-load" not in opts:
        home = project.find_home()
        saved = project.load(home) if home is not None else None
        config = {**(saved or {}), **config}
    wait = _seconds(opts["--wait"]) if "--wait" in opts else None
    return terminal.Settings(config, indices, "--over-subscribe" in opts or "-o" in opts, wait, join)


def resolve(command: List[str]) -> str:
    """The program to run, found on PATH now: a command that does not exist
    is refused before anything is held."""
    import shutil

    program = command[0]
    found = shutil.which(program) if "/" not in program else (program if os.access(program, os.X_OK) else None)
    if found is None or os.path.isdir(found):
        raise GenvError("cannot run %s: command not found" % program, 127)
    return found


def start(program: str, command: List[str], changes: Dict[str, Optional[str]]) -> Tuple[int, int]:
    """Fork the command, held before exec until it is a terminal too
    (the environment must outlive this process if it is killed). Returns the
    child's PID and the write end of its go-ahead pipe."""
    environ = dict(os.environ)
    terminal.apply(changes, environ)
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(go)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            for signum in FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            if os.read(ready, 1) != b"g":
                os._exit(125)  # genv run died before the command was a terminal
            os.close(ready)
            os.execve(program, command, environ)
        except OSError as error:
            os.write(2, ("genv: cannot run %s: %s\n" % (command[0], error.strerror)).encode())
            os._exit(127 if isinstance(error, FileNotFoundError) else 126)
        os._exit(127)  # pragma: no cover
    os.close(ready)
    return pid, go


def supervise(pid: int) -> int:
    """Wait for the command; pass SIGINT, SIGTERM and SIGHUP on to it (but
    not the terminal's own ^C, which reaches it already); its status, 128+N
    if signal N ended it."""
    wanted = set(FORWARDED) | {signal.SIGCHLD}
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)
        if hasattr(signal, "sigwaitinfo"):
            info = signal.sigwaitinfo(wanted)
            signum, code = info.si_signo, info.si_code
        else:  # pragma: no cover - no sigwaitinfo (macOS): forward everything
            signum, code = signal.sigwait(wanted), 0
        if signum != signal.SIGCHLD and not (signum in (signal.SIGINT, signal.SIGHUP) and code == SI_KERNEL):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def main(argv: List[str]) -> int:
    opts, command = split(argv)
    chosen = settings(opts)
    program = resolve(command)
    ctx = Context()
    eid: Optional[str] = None
    child = -1
    try:
        # Ctrl-C while waiting in line leaves the line (exit 130).
        env = terminal.enter(ctx, chosen)
        eid = env["id"]
        # From here on, signals wait for supervise(), which passes them on.
        signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARDED) | {signal.SIGCHLD})
        child, go = start(program, command, terminal.variables(ctx, env, os.environ))
        terminal.adopt(ctx, eid, child)
        os.write(go, b"g")
        os.close(go)
        return supervise(child)
    finally:
        if eid is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARDED))
            terminal.leave(ctx, eid, [child] if child > 0 else [])
        sys.stdout.flush()
