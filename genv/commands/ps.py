"""genv ps: every process on the GPUs, whose it is and in which environment."""

from __future__ import annotations

from ..cli import FORMAT_OPTIONS, Context, complete_options, out, output_format, parse, print_json
from ..listing import ps_docs
from ..table import csv, render, size
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List

OPTIONS = FORMAT_OPTIONS
FIELDS = ("gpu", "pid", "uid", "user", "env_id", "env_name", "memory", "command", "managed", "misplaced")


def complete(words: List[str]) -> List[str]:
    return complete_options(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def note(doc: Dict[str, Any]) -> str:
    """What makes a process stand out."""
    if doc["managed"] is None:
        return "unknown (exited or PID reused)"
    if not doc["managed"]:
        return "UNMANAGED"
    return "MISPLACED" if doc["misplaced"] else ""


def main(argv: List[str]) -> int:
    opts, _ = parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    with Session(ctx, holders_only=True, listing=True, observe=True) as session:
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
