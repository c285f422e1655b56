"""genv envs: every live environment on this machine."""

from __future__ import annotations

from .. import environments, jsonio
from ..cli import Context, complete_options, out, parse
from ..table import ago, render
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List

OPTIONS = {"--json": False}


def complete(words: List[str]) -> List[str]:
    return complete_options(words, OPTIONS, {})


def main(argv: List[str]) -> int:
    opts, _ = parse(argv, OPTIONS, 0)
    ctx = Context()
    with Session(ctx, listing=True) as session:
        rows = [(uid, env) for uid, env in session.tx.all_envs()]
    rows.sort(key=lambda row: (row[1]["created"], row[1]["id"]))
    if "--json" in opts:
        out(
            jsonio.dumps(
                [
                    {
                        "id": env["id"],
                        "uid": uid,
                        "user": ctx.user(uid),
                        "name": env["config"].get("name"),
                        "gpus": env["config"].get("gpus"),
                        "created": env["created"],
                        "pids": [terminal["pid"] for terminal in env["terminals"]],
                        "devices": environments.indices(env),
                    }
                    for uid, env in rows
                ]
            )
            + "\n"
        )
        return 0
    table = [
        (
            env["id"],
            ctx.describe(uid),
            env["config"].get("name", ""),
            ago(session.now - env["created"]),
            " ".join(str(terminal["pid"]) for terminal in env["terminals"]),
        )
        for uid, env in rows
    ]
    out(render(("ID", "USER", "NAME", "CREATED", "PID(S)"), table))
    return 0
