"""What every Python command shares: running it, printing, listing formats.

A command is a ``main(argv)`` (options parsed with ``genv.options``); ``run``
calls it and turns what it raises into one ``genv: ...`` line on stderr and a
non-zero status (a traceback only with GENV_DEBUG=1). Messages go through
``genv.report``.
"""

from __future__ import annotations

import os
import sys

from .errors import GenvError, UsageError
from .report import warn

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, NoReturn, Optional


def out(text: str) -> None:
    """Write text to stdout, passing undecodable bytes through unchanged."""
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


def run(command: Callable[[List[str]], Optional[int]], complete: Optional[Callable[[List[str]], List[str]]] = None) -> NoReturn:
    argv = sys.argv[1:]
    status = 0
    try:
        if argv[:1] == ["--complete"]:
            for candidate in complete(argv[1:]) if complete else []:
                out(candidate + "\n")
        else:
            status = command(argv) or 0
        sys.stdout.flush()
    except GenvError as error:
        warn(str(error))
        status = error.status
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        status = 141
    except Exception as error:  # the promise: no traceback
        if os.environ.get("GENV_DEBUG"):
            raise
        warn("internal error: %s: %s (run with GENV_DEBUG=1 for details)" % (type(error).__name__, error))
        status = 70
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = status or 141
    # Skip interpreter teardown; everything is written and flushed.
    os._exit(status)


FORMAT_OPTIONS = {"--format": True, "--json": False}
FORMATS = ("table", "csv", "json")


def output_format(opts: Dict[str, Any]) -> str:
    """``--format table|csv|json`` (``--json`` is ``--format json``)."""
    chosen = opts.get("--format", "json" if "--json" in opts else "table")
    if chosen not in FORMATS:
        raise UsageError("invalid --format %r (formats: %s)" % (chosen, ", ".join(FORMATS)))
    if "--json" in opts and chosen != "json":
        raise UsageError("--json and --format %s disagree" % chosen)
    return str(chosen)


def print_json(value: Any) -> None:
    from . import jsonio

    out(jsonio.dumps(value) + "\n")


COMPLETION_LOCK_TIMEOUT = 0.2
"""Tab completion never waits longer than this for the state lock."""


def env_ids() -> List[str]:
    """Live environments the caller may join (completion of --id)."""
    from .environments import prune
    from .procs import processes
    from .store import StateDir

    euid = os.geteuid()
    try:
        with StateDir().transaction(COMPLETION_LOCK_TIMEOUT, listing=True) as tx:
            prune(tx.users, processes())
            return [env["id"] for uid, env in tx.all_envs() if euid in (0, uid)]
    except GenvError:
        return []
