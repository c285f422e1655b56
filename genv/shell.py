"""bash and zsh code for the ``genv`` function to eval: the shell's renderer.

``Script`` has a few primitives (export, unset, local assignment, printing,
and calls of the fixed helper functions that ``genv init -`` defined) and
renders an activation plan (``genv.core.activation.Plan``) with them;
``encode`` turns it into bytes for bash and zsh. Every value is
single-quoted, each ``'`` written as ``'\\''``, so a value is always data;
helper names come from a fixed list.

The code works whatever options the user set: an assignment and its
``export`` are separate commands (with ``set -k``, ``export X=1`` would be an
assignment *to* ``export``, which then prints the environment), and nothing
relies on word splitting, globbing or aliases.
"""

from __future__ import annotations

from .core.activation import variable_name

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, List, Optional

    from .core.activation import Plan

# The functions `genv init -` defines (libexec/init/*.sh) that scripts call.
HELPERS = frozenset(("_genv_path_add", "_genv_path_remove", "_genv_prompt_set", "_genv_prompt_clear",
                     "_genv_prompt_name"))
_PROMPT = {"set": "_genv_prompt_set", "name": "_genv_prompt_name", "clear": "_genv_prompt_clear"}


def quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


class Script:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def export(self, name: str, value: str) -> None:
        self.assign(name, value)
        self.lines.append("export %s" % name)

    def unset(self, name: str) -> None:
        self.lines.append("unset %s" % variable_name(name))

    def assign(self, name: str, value: str) -> None:
        """A shell variable (exported only if it already was)."""
        self.lines.append("%s=%s" % (variable_name(name), quote(value)))

    def restore(self, name: str, value: Optional[str]) -> None:
        if value is None:
            self.unset(name)
        else:
            self.export(name, value)

    def echo(self, text: str) -> None:
        self.lines.append("printf '%%s\\n' %s" % quote(text))

    def echo_value(self, exact: str, shown: str) -> None:
        """A value for people on a terminal (``shown``, escaped) and for
        scripts otherwise (``exact``): ``name=$(genv config name)`` gets the
        name as it is. Python runs inside the function's ``$(...)`` and
        cannot see the terminal: the shell asks, where it prints."""
        if exact == shown:
            self.echo(exact)
            return
        self.lines.append("if [ -t 1 ]; then printf '%%s\\n' %s; else printf '%%s\\n' %s; fi"
                          % (quote(shown), quote(exact)))

    def call(self, helper: str, *args: str) -> None:
        """Call one of genv's shell helpers with quoted arguments."""
        if helper not in HELPERS:
            raise ValueError("not a genv shell helper: %r" % helper)
        self.lines.append(" ".join([helper] + [quote(arg) for arg in args]))

    def plan(self, plan: Plan) -> "Script":
        """Render an activation plan: variables, then PATH, then the prompt."""
        for name, value in plan.variables.items():
            self.restore(name, value)
        if plan.path_add is not None:
            self.call("_genv_path_add", plan.path_add)
        if plan.path_remove is not None:
            self.call("_genv_path_remove", plan.path_remove)
        if plan.prompt is not None:
            self.call(_PROMPT[plan.prompt], *(() if plan.name is None or plan.prompt == "clear" else (plan.name,)))
        return self

    def render(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def encode(self) -> bytes:
        """The script as bytes; raises UnicodeEncodeError for a value that
        cannot be written (a lone surrogate)."""
        return self.render().encode("utf-8", "surrogateescape")


def emit(payload: bytes) -> None:
    """Print a script (once, whole)."""
    import sys

    out = sys.stdout.buffer
    out.write(payload)
    out.flush()


def render(outcome: Any, script: Optional[Script] = None) -> None:
    """How a command that changes the shell ends: the outcome's plan as
    shell code (after what ``script`` holds), then its messages."""
    from .report import warn

    emit((script or Script()).plan(outcome.plan).encode())
    for message in outcome.messages:
        warn(message)
