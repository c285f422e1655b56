"""genv envs: every live environment on this machine."""

from __future__ import annotations

from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core import listings
from ..core.context import Context
from ..table import ago, csv, idle_text, render, until_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = FORMAT_OPTIONS


def complete(words: List[str]) -> List[str]:
    from ._hosts import complete as complete_hosts

    return complete_hosts(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def _waiting(waiting: Optional[Dict[str, Any]], now: float) -> str:
    if not waiting:
        return ""
    from ..sizes import format_size

    what = ("GPU %s" % ",".join(map(str, waiting["indices"])) if waiting["indices"]
            else "%d GPU%s" % (waiting["count"], "" if waiting["count"] == 1 else "s"))
    if waiting["memory"]:
        what += " (%s each)" % format_size(waiting["memory"] << 20)
    stopped = ", stopped" if waiting.get("stopped") is True else ""
    return "for %s since %s%s" % (what, ago(now - waiting["since"]), stopped)


def _csv(docs: List[Dict[str, Any]], hosts: Optional[List[str]] = None) -> str:
    """The CSV; with ``hosts`` (one per doc), a host field first."""
    lead = (lambda position: (hosts[position],)) if hosts is not None else (lambda position: ())
    return csv(("host",) * (hosts is not None)
               + ("id", "uid", "user", "name", "gpus", "gpu_memory", "created", "pids", "devices", "waiting_since",
                  "waiting_for", "waiting_stopped", "idle_seconds", "until"),
               [lead(position)
                + (d["id"], d["uid"], d["user"], d["name"], d["gpus"], d["gpu_memory"], d["created"],
                   " ".join(map(str, d["pids"])), " ".join(map(str, d["devices"])),
                   d["waiting"]["since"] if d["waiting"] else None,
                   d["waiting"]["count"] if d["waiting"] else None,
                   (d["waiting"].get("stopped") is True) if d["waiting"] else None, d.get("idle_seconds"),
                   d.get("until")) for position, d in enumerate(docs)])


def _table(docs: List[Dict[str, Any]], now: float, hosts: Optional[List[str]] = None) -> str:
    """The table; with ``hosts`` (one per doc), a HOST column first. IDLE,
    UNTIL and WAITING only when some environment has one."""
    lead = (lambda position: (hosts[position],)) if hosts is not None else (lambda position: ())
    waiting = any(d["waiting"] for d in docs)
    idle = any(idle_text(d.get("idle_seconds")) for d in docs)
    until = any(d.get("until") is not None for d in docs)
    header = ("HOST",) * (hosts is not None) + ("ID", "USER", "NAME", "CREATED", "PID(S)") + (
        ("IDLE",) if idle else ()) + (("UNTIL",) if until else ()) + (("WAITING",) if waiting else ())
    return render(header, [
        lead(position)
        + (d["id"], "%s(%d)" % (d["user"], d["uid"]), d["name"] or "", ago(now - d["created"]),
           " ".join(map(str, d["pids"])))
        + ((idle_text(d.get("idle_seconds")),) if idle else ())
        + ((until_text(d.get("until"), now),) if until else ())
        + ((_waiting(d["waiting"], now),) if waiting else ()) for position, d in enumerate(docs)])


def main(argv: List[str]) -> int:
    from ..remote import wants_hosts

    if wants_hosts(argv):
        from ._hosts import listing

        return listing("envs", argv, OPTIONS, _table, _csv)
    opts, _ = options.parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    docs, now = listings.envs(ctx)
    if form == "json":
        print_json(docs)
    elif form == "csv":
        out(_csv(docs))
    else:
        out(_table(docs, now))
    return 0
