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
    from typing import Any, Dict, List, Mapping, Optional

SNAPSHOT = "_GENV_SAVED"
# Hints that keep frameworks to an environment's share of GPU memory: JAX
# preallocates a fraction of each GPU (the newer and the older name of the
# variable), TensorFlow all of it unless memory growth is on.
FRACTIONS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")
GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
HINTS_SET = "_GENV_HINTS"  # what genv exported: "NAME=VALUE,NAME=VALUE"
# Variables genv sets in an active shell and restores on deactivate.
SAVED = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GENV_ATTACHED_GPUS", "GENV_GPU_MEMORY") + FRACTIONS + (GROWTH,)

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


def cuda_list(env: Optional[Dict[str, Any]]) -> str:
    """What CUDA_VISIBLE_DEVICES holds: the environment's GPUs as nvidia-smi
    indices (with CUDA_DEVICE_ORDER=PCI_BUS_ID); in a Slurm job, as UUIDs
    (genv/slurm/facts.py says why)."""
    gpus = gpu_list(env)
    if gpus and os.environ.get("SLURM_JOB_ID") and os.environ.get("GENV_SLURM") != "0":
        from .slurm import in_job
        from .slurm.facts import cuda_visible

        return cuda_visible(env, gpus) if in_job() else gpus
    return gpus


def fraction(env: Optional[Dict[str, Any]]) -> Optional[str]:
    """The share of GPU memory as a fraction of the GPUs' total, rounded down
    to two decimals (of the largest attached GPU, so that no GPU gets more
    than the share); None without a share."""
    if not env:
        return None
    shares = [d for d in env["devices"] if d.get("memory") is not None and d.get("total")]
    if not shares:
        return None
    hundredths = min(100, shares[0]["memory"] * 100 // max(d["total"] for d in shares))
    return "%d.%02d" % divmod(hundredths, 100)


def hint_changes(env: Optional[Dict[str, Any]], base: Mapping[str, str]) -> Dict[str, Optional[str]]:
    """The framework hints for the environment's share, as changes to the
    variables ``base`` has (None: unset): genv's values, or the removal of
    those genv set before (``_GENV_HINTS`` names them and their values); a
    value the user set (even one equal to genv's) is never touched."""
    share = fraction(env)
    # TensorFlow's growth needs no size: any share sets it (even of a GPU
    # whose size nvidia-smi does not say).
    has_share = any(d.get("memory") is not None for d in env["devices"]) if env else False
    wanted: Dict[str, Optional[str]] = {name: share for name in FRACTIONS}
    wanted[GROWTH] = "true" if has_share else None
    genv_set: Dict[str, str] = {}
    for item in (base.get(HINTS_SET) or "").split(","):
        key, sep, text = item.partition("=")
        if sep and key in wanted:
            genv_set[key] = text
    changes: Dict[str, Optional[str]] = {}
    now_set = []
    for name, value in wanted.items():
        current = base.get(name)
        if current is not None and genv_set.get(name) != current:
            continue  # the user's own value keeps priority
        if value is not None:
            now_set.append("%s=%s" % (name, value))
        if value != current:
            changes[name] = value
    record = ",".join(now_set) or None
    if record != (base.get(HINTS_SET) or None):
        changes[HINTS_SET] = record
    return changes


def hints(script: Script, env: Optional[Dict[str, Any]]) -> None:
    """Export the framework hints for the environment's share (see
    ``hint_changes``)."""
    for name, value in hint_changes(env, os.environ).items():
        script.restore(name, value)


def sync(script: Script, env: Optional[Dict[str, Any]]) -> None:
    """Point this shell at the environment's current GPUs, share and name."""
    gpus = gpu_list(env)
    script.export("CUDA_VISIBLE_DEVICES", cuda_list(env))
    script.export("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    script.export("GENV_ATTACHED_GPUS", gpus)
    memory = next((d["memory"] for d in env["devices"] if d.get("memory") is not None), None) if env else None
    if memory is not None:
        script.export("GENV_GPU_MEMORY", str(memory))  # for the nvidia-smi shim
    else:
        script.unset("GENV_GPU_MEMORY")
    hints(script, env)
    prompt_name(script, env, "_genv_prompt_name")


def prompt_name(script: Script, env: Optional[Dict[str, Any]], helper: str, *first: str) -> None:
    """The name as the prompt shows it: escaped, like everywhere else."""
    name = env["config"].get("name") if env else None
    script.call(helper, *(first + ((printable(name),) if name is not None else ())))

