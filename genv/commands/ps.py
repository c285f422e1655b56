"""genv ps: every process on the GPUs, whose it is and in which environment."""

from __future__ import annotations

from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core.context import Context
from ..core.session import Session
from ..listing import ps_docs
from ..table import csv, render, size

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List

OPTIONS = FORMAT_OPTIONS
FIELDS = ("gpu", "pid", "uid", "user", "env_id", "env_name", "memory", "command", "managed", "misplaced")


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def note(doc: Dict[str, Any]) -> str:
    """What makes a process stand out."""
    if doc["managed"] is None:
        return "unknown (exited or PID reused)"
    if not doc["managed"]:
        return "UNMANAGED"
    return "MISPLACED" if doc["misplaced"] else ""


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    with Session(ctx, holders_only=True, listing=True, observe=True, details=True) as session:
        docs = ps_docs(session.attributed(), ctx.user)
    if form == "json":
        print_json(docs)
    elif form == "csv":
        out(csv(FIELDS, [[doc[field] for field in FIELDS] for doc in docs]))
    elif not docs:
        out("No GPU processes found\n")
    else:
        out(render(("GPU", "PID", "USER", "ENV ID", "ENV NAME", "MEMORY", "NOTE", "COMMAND"), [
            ("-" if d["gpu"] is None else str(d["gpu"]), str(d["pid"]), d["user"] or "unknown", d["env_id"] or "-",
             d["env_name"] or "", size(d["memory"]), note(d), d["command"] or "") for d in docs]))
    return 0
