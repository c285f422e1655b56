"""genv devices: every GPU, and the environment that holds it."""

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
    rows = []
    # Only environments that hold a GPU matter here: checking the liveness
    # of every other one would make the listing grow with their number.
    with Session(ctx, need_devices=True, holders_only=True, listing=True) as session:
        held = environments.holdings(session.users, session.machine)
        for device in session.machine:
            holders = held[device["index"]]
            found = (holders[0][0], holders[0][1]) if holders else None
            attached = holders[0][2]["attached"] if holders else None
            rows.append((device, found, attached))
    if "--json" in opts:
        out(
            jsonio.dumps(
                [
                    {
                        "index": device["index"],
                        "uuid": device.get("uuid"),
                        "name": device.get("name"),
                        "env": found[1]["id"] if found else None,
                        "env_name": found[1]["config"].get("name") if found else None,
                        "user": ctx.user(found[0]) if found else None,
                        "attached": attached,
                    }
                    for device, found, attached in rows
                ]
            )
            + "\n"
        )
        return 0
    table = [
        (
            str(device["index"]),
            found[1]["id"] if found else "",
            found[1]["config"].get("name", "") if found else "",
            ago(session.now - attached) if attached is not None else "",
        )
        for device, found, attached in rows
    ]
    out(render(("ID", "ENV ID", "ENV NAME", "ATTACHED"), table))
    return 0
