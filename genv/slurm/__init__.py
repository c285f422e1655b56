"""Slurm facts: the one place that knows about Slurm (this package; see
docs/slurm.md).

- **A Slurm node** is a machine with a Slurm configuration: ``SLURM_CONF``
  naming a file, ``/etc/slurm/slurm.conf``, or the copy a configless slurmd
  keeps in ``/run/slurm/conf``. Elsewhere genv asks Slurm nothing (an
  installed but unconfigured ``scontrol`` falls back to DNS look-ups).
  ``GENV_SLURM=0`` turns everything here off.
- **In a job** (``SLURM_JOB_ID`` on a Slurm node) the GPUs genv manages are
  the job's GPUs on this node, its state lives in a folder of the job's own
  (``job_state_dir``), and CUDA is told the GPUs by UUID (``cuda_visible``).
- **Beside jobs** every GPU that Slurm allocated to a job running on this
  node is held by that job (``slurm:<jobid>``), and a GPU process whose
  cgroup (a fact the kernel keeps) names a job is that job's.

Which GPUs jobs hold is asked at most once per command, ``scontrol -d -o show
job [ID]``, through ``spawn`` with a time-out (``GENV_SLURM_TIMEOUT``, default
10 s); ``scontrol listpids`` once more only where cgroups cannot say whose a
GPU process is.
When Slurm cannot answer, ``look`` says so in one line and falls back on what
the node shows (processes in a job's cgroup, busy GPUs).

The parsing functions are pure. scontrol's text holds what users typed (a job
name, a comment), which may look like fields or even like records: the
parser takes the union of every reading, so a job can only ever look as if it
held *more* GPUs, never fewer.
"""

from __future__ import annotations

# Only what every command needs (is this a Slurm node, a job?) is imported
# here (genv/slurm/node.py): off Slurm nothing more. The rest is in
# genv/slurm/facts.py, and reachable as genv.slurm.<name> too.
from .node import CONFIGS, configuration, enabled, in_job, job_id

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, Optional, Sequence

    from ..gpus import App
    from .facts import View

__all__ = ["CONFIGS", "configuration", "enabled", "in_job", "job_id", "look"]


def look(machine: Sequence[Dict[str, Any]], apps: Sequence[App], facts: Any,
         say: Callable[[str], None]) -> Optional[View]:
    """What Slurm means for this command (None off Slurm: nothing asked,
    nothing more imported). Runs scontrol: call it before taking the state
    lock. ``say`` gets the one line that tells why Slurm's answer is not
    used, if so."""
    if not enabled() or configuration() is None:
        return None
    from .facts import look_here

    return look_here(machine, apps, facts, say)


def __getattr__(name: str) -> Any:
    """genv.slurm.<name> for the names of genv.slurm.facts (imported then)."""
    if name != "facts" and not name.startswith("__"):
        from . import facts

        if hasattr(facts, name):
            return getattr(facts, name)
    raise AttributeError("module 'genv.slurm' has no attribute %r" % name)
