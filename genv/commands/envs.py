"""genv envs: every live environment on this machine."""

from __future__ import annotations

from .. import options
from ..cli import FORMAT_OPTIONS, out, output_format, print_json
from ..core.context import Context
from ..core.session import Session
from ..listing import envs_docs
from ..table import ago, csv, render

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = FORMAT_OPTIONS


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--format": lambda: ["table", "csv", "json"]})


def _waiting(waiting: Optional[Dict[str, Any]], now: float) -> str:
    if not waiting:
        return ""
    from ..sizes import format_size

    what = ("GPU %s" % ",".join(map(str, waiting["indices"])) if waiting["indices"]
            else "%d GPU%s" % (waiting["count"], "" if waiting["count"] == 1 else "s"))
    if waiting["memory"]:
        what += " (%s each)" % format_size(waiting["memory"] << 20)
    return "for %s since %s" % (what, ago(now - waiting["since"]))


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    form = output_format(opts)
    ctx = Context()
    with Session(ctx, listing=True) as session:
        docs = envs_docs(session.users, ctx.user)
    if form == "json":
        print_json(docs)
    elif form == "csv":
        out(csv(("id", "uid", "user", "name", "gpus", "gpu_memory", "created", "pids", "devices", "waiting_since",
                 "waiting_for"),
                [(d["id"], d["uid"], d["user"], d["name"], d["gpus"], d["gpu_memory"], d["created"],
                  " ".join(map(str, d["pids"])), " ".join(map(str, d["devices"])),
                  d["waiting"]["since"] if d["waiting"] else None,
                  d["waiting"]["count"] if d["waiting"] else None) for d in docs]))
    else:
        waiting = any(d["waiting"] for d in docs)
        header = ("ID", "USER", "NAME", "CREATED", "PID(S)") + (("WAITING",) if waiting else ())
        out(render(header, [
            (d["id"], "%s(%d)" % (d["user"], d["uid"]), d["name"] or "", ago(session.now - d["created"]),
             " ".join(map(str, d["pids"])))
            + ((_waiting(d["waiting"], session.now),) if waiting else ()) for d in docs]))
    return 0
