"""The activation plan: what a terminal of an environment must see.

Operations return a ``Plan``: variables to set (a string) or unset
(``None``), a folder to put first on PATH or to take out of it, and what
the prompt shows. Renderers turn a plan into effects: ``genv.shell.Script``
into bash/zsh code for the ``genv`` function to eval; ``apply`` into
changes of a mapping (``os.environ`` for the SDK, a child's environment for
``genv run``), returning the plan that undoes them exactly.

The snapshot (``_GENV_SAVED``) records, at activation, the values the
variables genv changes had before (null: unset), so that deactivate restores
each exactly: unset and empty stay apart (``CUDA_VISIBLE_DEVICES`` unset is
every GPU, empty is none).
"""

from __future__ import annotations

import binascii
import os

from .. import jsonio
from ..errors import GenvError
from ..text import encodable, printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Mapping, MutableMapping, Optional

SNAPSHOT = "_GENV_SAVED"
# Hints that keep frameworks to an environment's share of GPU memory: JAX
# preallocates a fraction of each GPU (the newer and the older name of the
# variable), TensorFlow all of it unless memory growth is on.
FRACTIONS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")
GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
HINTS_SET = "_GENV_HINTS"  # what genv exported: "NAME=VALUE,NAME=VALUE"
# Variables genv sets in an active terminal and restores on deactivate.
SAVED = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GENV_ATTACHED_GPUS", "GENV_GPU_MEMORY") + FRACTIONS + (GROWTH,)
ENV_ID = "GENV_ENVIRONMENT_ID"
# What a shell keeps to follow its environment (``genv sync``, the prompt
# check in libexec/init/common.sh): the owner's marker file and the token it
# held at the last sync, the last note told, the end (boot clock, whole
# seconds) and the end already warned about.
SYNC_FILE, SYNC, NOTE, UNTIL, WARNED = "_GENV_SYNC_FILE", "_GENV_SYNC", "_GENV_NOTE", "_GENV_UNTIL", "_GENV_WARNED"
SYNC_VARS = (SYNC_FILE, SYNC, NOTE, UNTIL, WARNED)


def variable_name(name: str) -> str:
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name) or name[0].isdigit():
        raise ValueError("not a variable name: %r" % name)
    return name


class Plan:
    """Changes to a terminal (see the module's docstring). ``prompt`` is
    ``"set"`` (show genv's prefix), ``"name"`` (a new name, if the prefix is
    shown), ``"clear"`` or None; ``name`` is the name shown (escaped)."""

    __slots__ = ("variables", "path_add", "path_remove", "prompt", "name")

    def __init__(self) -> None:
        self.variables: Dict[str, Optional[str]] = {}
        self.path_add: Optional[str] = None
        self.path_remove: Optional[str] = None
        self.prompt: Optional[str] = None
        self.name: Optional[str] = None

    def set(self, name: str, value: Optional[str]) -> None:
        """Set (a string) or unset (None) a variable. A value that cannot be
        written out (a lone surrogate) is refused now, before any state
        changes, so that rendering the plan cannot fail later."""
        if value is not None and not encodable(value):
            raise GenvError("cannot set %s: its value holds characters that cannot be written out" % name)
        self.variables[variable_name(name)] = value

    def show(self, prompt: str, env: Optional[Dict[str, Any]]) -> None:
        name = env["config"].get("name") if env else None
        self.prompt, self.name = prompt, printable(name) if name is not None else None

    def __repr__(self) -> str:
        return "Plan(%r, path_add=%r, path_remove=%r, prompt=%r, name=%r)" % (
            self.variables, self.path_add, self.path_remove, self.prompt, self.name)


# --- what an environment's terminal sees ----------------------------------------


def gpu_list(env: Optional[Dict[str, Any]]) -> str:
    from ..environments import indices

    return ",".join(map(str, indices(env))) if env else ""


def cuda_list(env: Optional[Dict[str, Any]], base: Mapping[str, str]) -> str:
    """What CUDA_VISIBLE_DEVICES holds: the environment's GPUs as nvidia-smi
    indices (with CUDA_DEVICE_ORDER=PCI_BUS_ID); in a Slurm job, as UUIDs
    (docs/slurm.md says why)."""
    gpus = gpu_list(env)
    if gpus and base.get("SLURM_JOB_ID") and base.get("GENV_SLURM") != "0":
        from .. import slurm

        if slurm.in_job():
            from ..slurm.facts import cuda_visible

            return cuda_visible(env, gpus)
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


def sync_into(plan: Plan, env: Optional[Dict[str, Any]], base: Mapping[str, str]) -> Plan:
    """Point a terminal at the environment's current GPUs, share and name:
    CUDA's GPUs (``cuda_list``), the shim's list and share, the framework
    hints (values the user set win)."""
    plan.set("CUDA_VISIBLE_DEVICES", cuda_list(env, base))
    plan.set("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    plan.set("GENV_ATTACHED_GPUS", gpu_list(env))  # nvidia-smi's indices, for the shim
    memory = next((d["memory"] for d in env["devices"] if d.get("memory") is not None), None) if env else None
    plan.set("GENV_GPU_MEMORY", str(memory) if memory is not None else None)  # for the nvidia-smi shim
    for name, value in hint_changes(env, base).items():
        plan.set(name, value)
    if plan.prompt is None:
        plan.show("name", env)
    return plan


def sync(env: Optional[Dict[str, Any]], base: Mapping[str, str]) -> Plan:
    """The plan of attach, detach and config: the terminal follows the state."""
    return sync_into(Plan(), env, base)


def open_plan(env: Dict[str, Any], base: Mapping[str, str], shims: Optional[str], prompt: bool) -> Plan:
    """A terminal (a shell, or a process started in the environment) enters
    ``env``: the snapshot of what it had, the environment's id, the shim
    first on PATH (``shims``, where genv's shim is), the GPUs, and the
    prompt (a shell only)."""
    plan = Plan()
    plan.set(SNAPSHOT, snapshot(base))
    plan.set(ENV_ID, env["id"])
    if shims is not None and os.path.isfile(os.path.join(shims, "nvidia-smi")):
        plan.path_add = shims
    if prompt:
        plan.show("set", env)
    return sync_into(plan, env, base)


def restore(base: Mapping[str, str], shims: Optional[str]) -> Plan:
    """Deactivate: every variable genv changed back to what the snapshot in
    ``base`` says (unset when there is none), genv's own variables unset,
    the shim taken off PATH, the prompt as it was."""
    saved = read_snapshot(base.get(SNAPSHOT))
    plan = Plan()
    for name in SAVED:
        plan.set(name, saved[name] if saved else None)
    plan.set(ENV_ID, None)
    plan.set(HINTS_SET, None)
    plan.set(SNAPSHOT, None)
    for name in SYNC_VARS:
        plan.set(name, None)
    plan.path_remove = shims
    plan.prompt = "clear"
    return plan


# --- the snapshot ------------------------------------------------------------------


def snapshot(base: Mapping[str, str]) -> str:
    """Encode the current values (None = unset) of the variables genv will
    change, to restore exactly on deactivate: unset and empty stay apart."""
    values: Dict[str, Optional[str]] = {name: base.get(name) for name in SAVED}
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


# --- the renderer for processes -----------------------------------------------------


def command_path(shims: Optional[str], path: str) -> str:
    """PATH with genv's nvidia-smi shim first (where genv's shim is)."""
    if shims is None or not os.path.isfile(os.path.join(shims, "nvidia-smi")) or shims in path.split(os.pathsep):
        return path
    return shims + (os.pathsep + path if path else "")


def apply(plan: Plan, environ: MutableMapping[str, str]) -> Plan:
    """Make the plan's changes to ``environ`` (a process's variables; the
    prompt is a shell's, and is left out). Returns the plan that restores
    ``environ`` exactly."""
    undo = Plan()
    path = environ.get("PATH")
    for name, value in plan.variables.items():
        undo.variables[name] = environ.get(name)
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    entries = (environ.get("PATH") or "").split(os.pathsep) if environ.get("PATH") else []
    if plan.path_remove is not None and plan.path_remove in entries:
        entries = [entry for entry in entries if entry != plan.path_remove]
    if plan.path_add is not None and plan.path_add not in entries:
        entries.insert(0, plan.path_add)
    changed = os.pathsep.join(entries)
    if changed != (environ.get("PATH") or ""):
        undo.variables.setdefault("PATH", path)
        environ["PATH"] = changed
    return undo
