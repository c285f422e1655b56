"""genv run: run a command in an environment of its own, that lives exactly
as long as the command (for scripts, cron jobs, notebooks' kernels)."""

from __future__ import annotations

import os
import sys

from .. import environments, project, signals
from ..cli import Context, complete_options, parse, parse_indices, wait_argv, wait_seconds
from ..errors import GenvError, UsageError
from ..gpus import parse_count
from . import _terminal as terminal

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Set, Tuple

OPTIONS = {"--gpus": True, "--gpu-memory": True, "--name": True, "--index": True, "--over-subscribe": False,
           "-o": False, "--wait": True, "--id": True, "--no-load": False}
FORWARDED = (signals.SIGINT, signals.SIGTERM, signals.SIGHUP)
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
    opts, _ = parse(wait_argv(argv[:at]), OPTIONS, 0)
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
    indices = parse_indices(opts["--index"]) if "--index" in opts else None
    if indices is not None and "gpus" in config and config["gpus"] != len(set(indices)):
        raise UsageError("--gpus %d and --index %s disagree" % (config["gpus"], opts["--index"]))
    join = environments.check_text(opts["--id"], "environment id") if "--id" in opts else None
    if join is None and "--no-load" not in opts:
        home = project.find_home()
        saved = project.load(home) if home is not None else None
        config = {**(saved or {}), **config}
    wait = wait_seconds(opts["--wait"]) if "--wait" in opts else None
    return terminal.Settings(config, indices, "--over-subscribe" in opts or "-o" in opts, wait, join)


def resolve(command: List[str], path: str) -> str:
    """The program to run, looked up as the command's own PATH will find
    it (the shim first): a command that does not exist (127) or cannot run
    (126) is refused before anything is held."""
    program = command[0]
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


def foreground() -> bool:
    """Whether genv run is in the foreground of a terminal (whose ^C and
    hang-up reach the command directly, as part of the same process group)."""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def start(program: str, command: List[str], own_group: bool, ignored: Set[int]) -> Tuple[int, int]:
    """Fork the command, held before its exec until genv run sends it its
    environment (once the environment holds it as a terminal, so that it
    outlives genv run if genv run is killed). Returns the child's PID and the
    write end of its pipe. ``own_group``: the command gets a process group of
    its own (signals sent to genv run's group then reach it once, through
    genv run). Signals genv run was started ignoring (nohup) stay ignored."""
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(go)
            if own_group:
                os.setpgid(0, 0)
            chunks = []
            while True:
                chunk = os.read(ready, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
            if not data.startswith(b"go\0"):
                os._exit(125)  # genv run gave up, or died, before the command was a terminal
            environ = dict(item.split(b"=", 1) for item in data[3:].split(b"\0") if b"=" in item)
            for signum in FORWARDED:
                signals.signal(signum, signals.SIG_IGN if signum in ignored else signals.SIG_DFL)
            signals.pthread_sigmask(signals.SIG_SETMASK, set())
            os.execve(program, command, environ)
        except OSError as error:
            os.write(2, ("genv: cannot run %s: %s\n" % (command[0], error.strerror)).encode())
            os._exit(127 if isinstance(error, FileNotFoundError) else 126)
        os._exit(127)  # pragma: no cover
    os.close(ready)
    if own_group:
        try:
            os.setpgid(pid, pid)  # also here: no race with a signal sent right away
        except OSError:
            pass
    return pid, go


def release(go: int, environ: Dict[str, str]) -> None:
    """Let the held command run, with ``environ``."""
    data = b"go\0" + b"\0".join(os.fsencode(key) + b"=" + os.fsencode(value) for key, value in environ.items())
    view = memoryview(data)
    while view:
        view = view[os.write(go, view):]
    os.close(go)


def supervise(pid: int, own_group: bool) -> int:
    """Wait for the command and return its wait status. SIGINT, SIGTERM and
    SIGHUP sent to genv run are passed on to the command (to its whole group
    when it has its own); in the foreground of a terminal, the terminal's ^C
    and hang-up reach the command already and are not passed on twice."""
    wanted = set(FORWARDED) | {signals.SIGCHLD}
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
        if hasattr(signals, "sigwaitinfo"):
            info = signals.sigwaitinfo(wanted)
            signum, code = info.si_signo, info.si_code
        else:  # pragma: no cover - no sigwaitinfo (macOS): pass everything on
            signum, code = signals.sigwait(wanted), 0
        if signum == signals.SIGCHLD or (not own_group and code == SI_KERNEL):
            continue
        try:
            if own_group:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: List[str]) -> int:
    opts, command = split(argv)
    chosen = settings(opts)
    ctx = Context()
    program = resolve(command, terminal.command_path(ctx, os.environ.get("PATH", "")))  # before anything is held
    ignored = {int(signum) for signum in FORWARDED if signals.getsignal(signum) == signals.SIG_IGN}
    own_group = not foreground()
    child, go = start(program, command, own_group, ignored)
    eid: Optional[str] = None
    status = 0
    try:
        # One step makes both genv run and the held command the environment's
        # terminals. Ctrl-C while waiting in line leaves the line (exit 130).
        env = terminal.enter(ctx, chosen, also=[child])
        eid = env["id"]
        # From here on, signals wait for supervise(), which passes them on.
        signals.pthread_sigmask(signals.SIG_BLOCK, set(FORWARDED) | {signals.SIGCHLD})
        environ = dict(os.environ)
        terminal.apply(terminal.variables(ctx, env, os.environ), environ)
        release(go, environ)
        go = -1
        status = supervise(child, own_group)
    finally:
        if go >= 0:  # the command never started: it must not
            os.close(go)
            try:
                os.kill(child, signals.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(child, 0)
        if eid is not None:
            signals.pthread_sigmask(signals.SIG_BLOCK, set(FORWARDED))
            terminal.leave(ctx, eid, [child])
        sys.stdout.flush()
    if os.WIFSIGNALED(status):
        died = os.WTERMSIG(status)
        if died in FORWARDED and died not in ignored:
            # Die of it too: a shell running genv run in a loop then stops
            # at ^C, as it would for the command itself.
            signals.signal(died, signals.SIG_DFL)
            signals.pthread_sigmask(signals.SIG_UNBLOCK, {died})
            os.kill(os.getpid(), died)
        return 128 + died
    return os.WEXITSTATUS(status)
