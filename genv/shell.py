"""Shell code for the ``genv`` function to eval: plan, then render.

Commands build a ``Script`` of a few primitives (export, unset, local
assignment, printing, and calls of the fixed helper functions that
``genv init -`` defined); ``render`` turns it into text for bash and zsh.
Every value is single-quoted, each ``'`` written as ``'\\''``, so a value is
always data. Nothing reaches stdout until the whole script is built.
"""

from __future__ import annotations

import binascii
import os
import sys


from . import jsonio
from .envs import indices

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Dict, List, Optional

SNAPSHOT = "_GENV_SAVED"
# Variables genv sets in an active shell and restores on deactivate.
SAVED = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GENV_ATTACHED_GPUS")


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
        self.lines.append("export %s=%s" % (_check_name(name), quote(value)))

    def unset(self, name: str) -> None:
        self.lines.append("unset %s" % _check_name(name))

    def assign(self, name: str, value: str) -> None:
        """A shell variable that is not exported."""
        self.lines.append("%s=%s" % (_check_name(name), quote(value)))

    def restore(self, name: str, value: Optional[str]) -> None:
        if value is None:
            self.unset(name)
        else:
            self.export(name, value)

    def echo(self, text: str) -> None:
        self.lines.append("printf '%%s\\n' %s" % quote(text))

    def trusted(self, code: str) -> None:
        """A fixed snippet written in genv's source, never built from data."""
        self.lines.append(code)

    def render(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def emit(script: Script) -> None:
    data = script.render().encode("utf-8", "surrogateescape")
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


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


def sync(script: Script, env: Optional[dict]) -> None:
    """Point this shell at the environment's current GPUs and name."""
    gpus = ",".join(map(str, indices(env))) if env else ""
    script.export("CUDA_VISIBLE_DEVICES", gpus)
    script.export("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    script.export("GENV_ATTACHED_GPUS", gpus)
    name = env["config"].get("name") if env else None
    if name is None:
        script.trusted('if [ -n "${_GENV_PS1_SET+x}" ]; then unset _GENV_PROMPT_NAME; _genv_prompt_set; fi')
    else:
        script.trusted(
            'if [ -n "${_GENV_PS1_SET+x}" ]; then _GENV_PROMPT_NAME=%s; _genv_prompt_set; fi' % quote(name)
        )
