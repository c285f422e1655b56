"""Shell code for the ``genv`` function to eval: plan, then render.

Commands build a ``Script`` of a few primitives (export, unset, local
assignment, printing, and calls of the fixed helper functions that
``genv init -`` defined); ``encode`` turns it into bytes for bash and zsh.
Every value is single-quoted, each ``'`` written as ``'\\''``, so a value is
always data; helper names come from a fixed list. Commands encode the script
*before* they commit their state change and print it after, so a script that
cannot be written means no change at all.

The code works whatever options the user set: an assignment and its
``export`` are separate commands (with ``set -k``, ``export X=1`` would be an
assignment *to* ``export``, which then prints the environment), and nothing
relies on word splitting, globbing or aliases.
"""

from __future__ import annotations

import binascii
import os

from . import jsonio
from .text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Sequence

SNAPSHOT = "_GENV_SAVED"
# Variables genv sets in an active shell and restores on deactivate.
SAVED = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GENV_ATTACHED_GPUS")

# The functions `genv init -` defines (libexec/init/*.sh) that scripts call.
HELPERS = frozenset(("_genv_path_add", "_genv_path_remove", "_genv_prompt_set", "_genv_prompt_clear",
                     "_genv_prompt_name"))


def quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _check_name(name: str) -> str:
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name) or name[0].isdigit():
        raise ValueError("not a shell variable name: %r" % name)
    return name


class Script:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def export(self, name: str, value: str) -> None:
        self.assign(name, value)
        self.lines.append("export %s" % name)

    def unset(self, name: str) -> None:
        self.lines.append("unset %s" % _check_name(name))

    def assign(self, name: str, value: str) -> None:
        """A shell variable (exported only if it already was)."""
        self.lines.append("%s=%s" % (_check_name(name), quote(value)))

    def restore(self, name: str, value: Optional[str]) -> None:
        if value is None:
            self.unset(name)
        else:
            self.export(name, value)

    def echo(self, text: str) -> None:
        self.lines.append("printf '%%s\\n' %s" % quote(text))

    def call(self, helper: str, *args: str) -> None:
        """Call one of genv's shell helpers with quoted arguments."""
        if helper not in HELPERS:
            raise ValueError("not a genv shell helper: %r" % helper)
        self.lines.append(" ".join([helper] + [quote(arg) for arg in args]))

    def render(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def encode(self) -> bytes:
        """The script as bytes; raises UnicodeEncodeError for a value that
        cannot be written (a lone surrogate)."""
        return self.render().encode("utf-8", "surrogateescape")


def snapshot() -> str:
    """Encode the current values (None = unset) of the variables genv will
    change, to restore exactly on deactivate: unset and empty stay apart."""
    values: Dict[str, Optional[str]] = {name: os.environ.get(name) for name in SAVED}
    raw = jsonio.dumps(values).encode("ascii")
    return binascii.b2a_base64(raw, newline=False).decode("ascii").replace("+", "-").replace("/", "_")


def read_snapshot(text: Optional[str]) -> Optional[Dict[str, Optional[str]]]:
    if not text:
        return None
    try:
        raw = binascii.a2b_base64(text.replace("-", "+").replace("_", "/").encode("ascii"))
        values = jsonio.loads(raw.decode("ascii"))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(values, dict):
        return None
    result: Dict[str, Optional[str]] = {}
    for name in SAVED:
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            return None
        result[name] = value
    return result


def gpu_list(env: Optional[Dict[str, Any]]) -> str:
    from .environments import indices

    return ",".join(map(str, indices(env))) if env else ""


def sync(script: Script, env: Optional[Dict[str, Any]]) -> None:
    """Point this shell at the environment's current GPUs and name."""
    gpus = gpu_list(env)
    script.export("CUDA_VISIBLE_DEVICES", gpus)
    script.export("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    script.export("GENV_ATTACHED_GPUS", gpus)
    prompt_name(script, env, "_genv_prompt_name")


def prompt_name(script: Script, env: Optional[Dict[str, Any]], helper: str, *first: str) -> None:
    """The name as the prompt shows it: escaped, like everywhere else."""
    name = env["config"].get("name") if env else None
    script.call(helper, *(first + ((printable(name),) if name is not None else ())))


def lines(values: Sequence[str]) -> Script:
    script = Script()
    for value in values:
        script.echo(value)
    return script
