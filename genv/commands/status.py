"""genv status: which environment this terminal is in, and what it holds."""

from __future__ import annotations

from .. import environments
from ..cli import Context, out, parse
from ..table import ago
from ..text import printable
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    parse(argv, {}, 0)
    ctx = Context()
    if ctx.eid is None:
        out("not active\n")
        return 0
    with Session(ctx, listing=True) as session:
        owner, env = session.env(ctx.eid)
        session.deliver_warnings(owner, env)
    config = env["config"]
    attached = environments.indices(env)
    lines = [
        "environment: %s" % printable(env["id"]),
        "owner: %s" % ctx.describe(owner),
        "name: %s" % (printable(config["name"]) if "name" in config else "(not set)"),
        "gpus: %s" % (config["gpus"] if "gpus" in config else "(not set)"),
        "attached: %s" % (",".join(map(str, attached)) if attached else "none"),
        "terminals: %s" % " ".join(str(terminal["pid"]) for terminal in env["terminals"]),
        "created: %s" % ago(session.now - env["created"]),
    ]
    out("\n".join(lines) + "\n")
    return 0
