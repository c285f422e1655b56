"""Is this a Slurm node, and is this process in a job? The two questions
every genv command asks of Slurm, answered from files and variables alone
(nothing is started, nothing else imported)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Optional

CONFIGS = ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")
PREFIX = "slurm:"
"""The id a job has where genv shows holders (``slurm:<jobid>``)."""


def enabled() -> bool:
    return os.environ.get("GENV_SLURM") != "0"


def configuration() -> Optional[str]:
    """The Slurm configuration that makes this machine a Slurm node, or None."""
    conf = os.environ.get("SLURM_CONF")
    if conf:
        return conf if os.path.isfile(conf) else None
    for path in CONFIGS:
        if os.path.isfile(path):
            return path
    return None


def job_id() -> Optional[str]:
    """The job this process runs in (``SLURM_JOB_ID``), or None. Only as
    Slurm writes an id (no leading zero): scontrol reads ``012`` as job 12,
    whose answer would then not be found under the name asked for."""
    text = os.environ.get("SLURM_JOB_ID", "")
    ok = text.isascii() and text.isdigit() and 0 < len(text) < 20 and not text.startswith("0")
    return text if ok else None


def in_job() -> bool:
    """In a Slurm job on a Slurm node, with genv's Slurm support on."""
    return enabled() and job_id() is not None and configuration() is not None
