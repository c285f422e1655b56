"""genv activate: put this terminal in an environment (new, or joined by id)."""

from __future__ import annotations

import os

from .. import environments, options, project
from ..cli import env_ids
from ..core import operations
from ..core.context import Context
from ..errors import GenvError
from ..report import warn
from ..shell import render

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS: options.Spec = {
    "--id": options.VALUE,
    "--name": options.VALUE,
    "--gpus": options.VALUE,
    "--no-load": options.FLAG,
    "--no-attach": options.FLAG,
    "--no-prompt": options.FLAG,
}


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--id": env_ids})


def _saved() -> Dict[str, Any]:
    """The project's saved configuration, if any (only for a new environment)."""
    try:
        return project.saved()
    except GenvError as error:
        raise GenvError("%s (activate with --no-load to skip it)" % error) from None


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    ctx = Context()
    if ctx.eid is not None:
        raise GenvError("this terminal is already in environment %s; run 'genv deactivate' first" % ctx.eid)
    eid: Optional[str] = environments.check_text(opts["--id"], "environment id") if "--id" in opts else None
    settings = options.configuration(opts)
    ctx.refuse_in_subshell("activate")
    config = settings if eid is not None or "--no-load" in opts else {**_saved(), **settings}
    # A new environment with a GPU count attaches; joining attaches if
    # --gpus changes the count.
    attach = "--no-attach" not in opts and "gpus" in (settings if eid is not None else config)
    outcome = operations.activate(ctx, os.environ, config, eid, attach, "--no-prompt" not in opts)
    render(outcome)
    if outcome.failure is not None:
        assert outcome.env is not None
        warn("activated environment %s, but could not attach GPUs: %s" % (outcome.env["id"], outcome.failure))
        return 1
    return 0
