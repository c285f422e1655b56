"""genv devices: every GPU, who holds it, and what runs on it."""

from __future__ import annotations

from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core import listings
from ..core.context import Context
from ..table import ago, csv, render, size

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = FORMAT_OPTIONS


def complete(words: List[str]) -> List[str]:
    from ._hosts import complete as complete_hosts

    return complete_hosts(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def _share(mib: Optional[int]) -> str:
    from ..sizes import format_size

    return "whole" if mib is None else format_size(mib << 20)


def _holder_name(holder: Dict[str, Any]) -> str:
    """An environment's name; for a Slurm job (genv/slurm/), whose job it is."""
    from ..slurm.node import PREFIX

    if holder["id"].startswith(PREFIX):
        return "Slurm job of %s" % holder["user"]
    return holder["name"] or ""


def _table(docs: List[Dict[str, Any]], now: float, hosts: Optional[List[str]] = None) -> str:
    """The table; with ``hosts`` (one per doc), a HOST column first."""
    from ..sizes import format_size

    rows = []
    for position, doc in enumerate(docs):
        host = (hosts[position],) if hosts is not None else ()
        memory = "%s / %s" % (size(doc["memory_used"]), size(doc["memory_total"]))
        available = doc["memory_available"]
        free = "-" if available is None else format_size(available << 20) if available else "0"
        holders = doc["environments"] or [None]
        for number, holder in enumerate(holders):
            first = number == 0
            rows.append(host + (
                str(doc["index"]) if first else "",
                holder["id"] if holder else "",
                _holder_name(holder) if holder else "",
                ago(now - holder["attached"]) if holder else "",
                _share(holder["memory"]) if holder else "",
                free if first else "",
                (doc["name"] or "") if first else "",
                memory if first else "",
            ))
    return render(("HOST",) * (hosts is not None)
                  + ("ID", "ENV ID", "ENV NAME", "ATTACHED", "SHARE", "FREE", "GPU", "MEMORY"), rows)


def _csv(docs: List[Dict[str, Any]], hosts: Optional[List[str]] = None) -> str:
    """The CSV; with ``hosts`` (one per doc), a host field first."""
    rows = []
    for position, doc in enumerate(docs):
        gpu = ((hosts[position],) if hosts is not None else ()) + (
            doc["index"], doc["uuid"], doc["name"], doc["memory_total"], doc["memory_used"], doc["memory_available"],
            len(doc["processes"]))
        for holder in doc["environments"] or [None]:
            rows.append(gpu + ((holder["id"], holder["name"], holder["uid"], holder["user"], holder["memory"],
                                holder["attached"]) if holder else (None,) * 6))
    return csv(("host",) * (hosts is not None)
               + ("index", "uuid", "name", "memory_total", "memory_used", "memory_available", "processes",
                  "env_id", "env_name", "env_uid", "env_user", "env_memory", "attached"), rows)


def main(argv: List[str]) -> int:
    from ..remote import wants_hosts

    if wants_hosts(argv):
        from ._hosts import listing

        return listing("devices", argv, OPTIONS, _table, _csv)
    opts, _ = options.parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    docs, now = listings.devices(ctx)
    if form == "json":
        print_json(docs)
    elif form == "csv":
        out(_csv(docs))
    else:
        out(_table(docs, now))
    return 0
