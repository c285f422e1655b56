"""genv status: which environment this terminal is in, what it holds, what runs."""

from __future__ import annotations

from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core import listings
from ..core.context import Context
from ..report import warn
from ..table import ago, csv, idle_text, size, until_text
from ..text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List

OPTIONS = FORMAT_OPTIONS
CSV_FIELDS = ("active", "id", "uid", "user", "name", "gpus", "gpu_memory", "devices", "pids", "created",
              "processes", "memory", "idle_seconds", "until")


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def _lines(doc: Dict[str, Any], now: float) -> str:
    import time

    from ..sizes import format_size

    processes = doc["processes"]
    known = [p["memory"] for p in processes if p["memory"] is not None]
    lines = [
        "environment: %s" % printable(doc["id"]),
        "owner: %s(%d)" % (printable(doc["user"]), doc["uid"]),
        "name: %s" % (printable(doc["name"]) if doc["name"] is not None else "(not set)"),
        "gpus: %s" % (doc["gpus"] if doc["gpus"] is not None else "(not set)"),
        "gpu memory: %s" % (format_size(doc["gpu_memory"] << 20) if doc["gpu_memory"] else "(whole GPUs)"),
        "attached: %s" % (",".join(map(str, doc["devices"])) if doc["devices"] else "none"),
    ]
    if doc.get("until") is not None:
        lines.append("ends: %s (%s)" % (until_text(doc["until"], now),
                                       time.strftime("%Y-%m-%d %H:%M", time.localtime(doc["until"]))))
    if idle_text(doc.get("idle_seconds")):
        lines.append("idle: %s (no process of this environment on its GPUs)" % idle_text(doc["idle_seconds"]))
    lines += [
        "terminals: %s" % " ".join(str(pid) for pid in doc["pids"]),
        "created: %s" % ago(now - doc["created"]),
        "processes: %d%s" % (len(processes), ", %s in use" % size(sum(known)) if known else ""),
    ]
    for p in processes:
        lines.append("  GPU %s  pid %d  %s  %s%s" % (
            "-" if p["gpu"] is None else p["gpu"], p["pid"], size(p["memory"]), printable(p["command"] or ""),
            "  (MISPLACED: not a GPU of this environment)" if p["misplaced"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    listed = listings.status(ctx, deliver=True)
    if listed is None:
        if form == "json":
            print_json({"active": False})
        elif form == "csv":
            out(csv(CSV_FIELDS, [(False,) + (None,) * (len(CSV_FIELDS) - 1)]))
        else:
            out("not active\n")
        return 0
    doc, now, messages = listed
    for message in messages:
        warn(message)
    if form == "json":
        print_json(doc)
    elif form == "csv":
        memory = sum(p["memory"] for p in doc["processes"] if p["memory"] is not None)
        out(csv(CSV_FIELDS, [(True, doc["id"], doc["uid"], doc["user"], doc["name"], doc["gpus"], doc["gpu_memory"],
                              " ".join(map(str, doc["devices"])), " ".join(map(str, doc["pids"])), doc["created"],
                              len(doc["processes"]), memory, doc["idle_seconds"], doc["until"])]))
    else:
        out(_lines(doc, now))
    return 0
