"""genv ps: every process on the GPUs, whose it is and in which environment."""

from __future__ import annotations

from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core import listings
from ..core.context import Context
from ..table import csv, render, size

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = FORMAT_OPTIONS
FIELDS = ("gpu", "pid", "uid", "user", "env_id", "env_name", "memory", "command", "managed", "misplaced")


def complete(words: List[str]) -> List[str]:
    from ._hosts import complete as complete_hosts

    return complete_hosts(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def note(doc: Dict[str, Any]) -> str:
    """What makes a process stand out."""
    if doc["managed"] is None:
        return "unknown (exited or PID reused)"
    if not doc["managed"]:
        return "UNMANAGED"
    return "MISPLACED" if doc["misplaced"] else ""


def _csv(docs: List[Dict[str, Any]], hosts: Optional[List[str]] = None) -> str:
    """The CSV; with ``hosts`` (one per doc), a host field first."""
    if hosts is None:
        return csv(FIELDS, [[doc[field] for field in FIELDS] for doc in docs])
    return csv(("host",) + FIELDS, [[host] + [doc[field] for field in FIELDS] for host, doc in zip(hosts, docs)])


def _table(docs: List[Dict[str, Any]], now: float, hosts: Optional[List[str]] = None) -> str:
    """The table; with ``hosts`` (one per doc), a HOST column first."""
    if not docs:
        return "No GPU processes found\n"
    lead = (lambda position: (hosts[position],)) if hosts is not None else (lambda position: ())
    return render(("HOST",) * (hosts is not None) + ("GPU", "PID", "USER", "ENV ID", "ENV NAME", "MEMORY", "NOTE",
                                                      "COMMAND"), [
        lead(position)
        + ("-" if d["gpu"] is None else str(d["gpu"]), str(d["pid"]), d["user"] or "unknown", d["env_id"] or "-",
           d["env_name"] or "", size(d["memory"]), note(d), d["command"] or "") for position, d in enumerate(docs)])


def main(argv: List[str]) -> int:
    from ..remote import wants_hosts

    if wants_hosts(argv):
        from ._hosts import listing

        return listing("ps", argv, OPTIONS, _table, _csv)
    opts, _ = options.parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    docs, now = listings.ps(ctx)
    if form == "json":
        print_json(docs)
    elif form == "csv":
        out(_csv(docs))
    else:
        out(_table(docs, now))
    return 0
