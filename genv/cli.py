"""What every Python command shares: parsing, running, the caller's context.

argparse costs about as much as the interpreter's start-up, so commands
declare their options in a dict and ``parse`` handles ``--opt VALUE``,
``--opt=VALUE``, flags and ``--``. Errors leave as one ``genv: ...`` line on
stderr and a non-zero status; a traceback is printed only with GENV_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from contextvars import ContextVar


from .errors import GenvError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple
    Options = Dict[str, bool]


def parse(argv: Sequence[str], options: Options, max_positional: int) -> Tuple[Dict[str, Any], List[str]]:
    values: Dict[str, Any] = {}
    positional: List[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            positional.extend(argv[index:])
            break
        if arg.startswith("-") and len(arg) > 1 and not arg[1:].isdigit():
            name, has_value, value = arg.partition("=")
            if name not in options:
                raise UsageError("unknown option %r" % name)
            if options[name]:
                if not has_value:
                    if index >= len(argv):
                        raise UsageError("option %s needs a value" % name)
                    value = argv[index]
                    index += 1
                if name in values:
                    raise UsageError("option %s given twice" % name)
                values[name] = value
            else:
                if has_value:
                    raise UsageError("option %s takes no value" % name)
                values[name] = True
            continue
        positional.append(arg)
    if len(positional) > max_positional:
        raise UsageError("unexpected argument %r" % positional[max_positional])
    return values, positional


def out(text: str) -> None:
    """Write text to stdout, passing undecodable bytes through unchanged."""
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


# Where messages go: stderr for commands; the SDK (a library prints nothing)
# sends them to the logger "genv" instead, for the duration of a call.
MESSAGES: ContextVar[Optional[Callable[[str], None]]] = ContextVar("genv_messages", default=None)


def err(text: str) -> None:
    """One line on stderr; control characters in it (from a name or an id)
    are escaped so that they cannot act on the terminal."""
    from .text import printable

    sink = MESSAGES.get()
    if sink is not None:
        sink(printable(text))
        return
    sys.stderr.buffer.write(("genv: %s\n" % printable(text)).encode("utf-8", "backslashreplace"))
    sys.stderr.flush()


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
        err(str(error))
        status = error.status
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        status = 141
    except Exception as error:  # the promise: no traceback
        if os.environ.get("GENV_DEBUG"):
            raise
        err("internal error: %s: %s (run with GENV_DEBUG=1 for details)" % (type(error).__name__, error))
        status = 70
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = status or 141
    # Skip interpreter teardown; everything is written and flushed.
    os._exit(status)


class Context:
    """Who is calling, from which shell, in which environment."""

    def __init__(self) -> None:
        environ = os.environ
        self.euid = os.geteuid()
        self.eid: Optional[str] = environ.get("GENV_ENVIRONMENT_ID")
        self.root = environ.get("GENV_ROOT") or os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
        self._names: Dict[int, str] = {}

    def shell_pid(self) -> int:
        text = os.environ.get("GENV_SHELL_PID", "")
        digits = text.lstrip("0")
        if digits.isascii() and digits.isdigit() and len(digits) < 20:  # (int() refuses over 4300 digits)
            return int(digits)
        return os.getppid()

    def in_subshell(self) -> bool:
        """Run by the ``genv`` function from a subshell, a pipeline or
        ``$(...)``, where the shell it would change is not the user's."""
        return os.environ.get("GENV_SUBSHELL") == "1"

    def refuse_in_subshell(self, command: str) -> None:
        """Commands that change the state or the shell call this before
        changing anything."""
        if self.in_subshell():
            raise GenvError(
                "'genv %s' changes your shell, so it must run in the shell itself, not in a subshell, "
                "a pipeline or $(...); nothing was changed" % command
            )

    def require_active(self) -> str:
        if self.eid is None:
            raise GenvError("this terminal is not in an environment; run 'genv activate' first")
        return self.eid

    def user(self, uid: int) -> str:
        if uid not in self._names:
            import pwd

            try:
                self._names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._names[uid] = str(uid)
        return self._names[uid]

    def describe(self, uid: int) -> str:
        return "%s(%d)" % (self.user(uid), uid)


def complete_options(words: List[str], options: Options, values: Dict[str, Callable[[], List[str]]]) -> List[str]:
    """Candidates after ``words``: an option's values, or the unused options."""
    if words and words[-1] in options and options[words[-1]]:
        supplier = values.get(words[-1])
        return supplier() if supplier else []
    used = set(word.partition("=")[0] for word in words)
    return [option for option in options if option not in used]


def wait_argv(argv: List[str]) -> List[str]:
    """``--wait`` takes an optional number of seconds: without one, it waits
    as long as it takes (``--wait=forever``)."""
    result = []
    for position, arg in enumerate(argv):
        if arg == "--wait":
            following = argv[position + 1] if position + 1 < len(argv) else None
            if following is None or following.startswith("-") or not following[:1].isdigit():
                arg = "--wait=forever"
        result.append(arg)
    return result


def wait_seconds(text: str) -> float:
    from .sizes import parse_seconds

    return float("inf") if text == "forever" else parse_seconds(text, "--wait", error=UsageError)


def parse_indices(text: str) -> List[int]:
    """``--index 0,2``: GPU indices."""
    from .gpus import parse_count

    parts = text.split(",")
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UsageError("invalid --index %r: expected GPU indices such as 0 or 0,2" % text)
    return [parse_count(part, "GPU index") for part in parts]


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
