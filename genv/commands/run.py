"""genv run: run a command in an environment of its own, that lives exactly
as long as the command (for scripts, cron jobs, notebooks' kernels)."""

from __future__ import annotations

import os

from .. import environments, options, project
from ..core import activation, operations, supervise
from ..core.context import Context
from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

OPTIONS: options.Spec = {"--gpus": options.VALUE, "--gpu-memory": options.VALUE, "--name": options.VALUE,
           "--index": options.VALUE, "--over-subscribe": options.FLAG, "-o": "--over-subscribe",
           "--wait": options.WAIT, "--id": options.VALUE, "--no-load": options.FLAG, options.FOR: options.VALUE}


def complete(words: List[str]) -> List[str]:
    if "--" in words:
        return []
    from ..cli import env_ids

    return options.complete(words, OPTIONS, {"--id": env_ids}) + ["--"]


def split(argv: List[str]) -> Tuple[Dict[str, Any], List[str]]:
    if "--" not in argv:
        raise UsageError("put the command after --: genv run [OPTIONS] -- COMMAND [ARGS...]")
    at = argv.index("--")
    opts, _ = options.parse(argv[:at], OPTIONS, 0)
    command = argv[at + 1:]
    if not command:
        raise UsageError("no command given after --")
    return opts, command


def settings(opts: Dict[str, Any]) -> operations.Settings:
    """The configuration from the options; with none of them (and not
    joining), the project's saved configuration, as on activate."""
    config = options.configuration(opts)
    indices = options.indices(opts["--index"]) if "--index" in opts else None
    if indices is not None and "gpus" in config and config["gpus"] != len(indices):
        raise UsageError("--gpus %d and --index %s disagree" % (config["gpus"], opts["--index"]))
    join = environments.check_text(opts["--id"], "environment id") if "--id" in opts else None
    if join is None and "--no-load" not in opts:
        config = {**project.saved(), **config}
    wait = options.wait_seconds(opts["--wait"]) if "--wait" in opts else None
    reserve = options.reserve_seconds(opts[options.FOR]) if options.FOR in opts else None
    return operations.Settings(config, indices, "--over-subscribe" in opts, wait, join, reserve)


def main(argv: List[str]) -> int:
    opts, command = split(argv)
    chosen = settings(opts)
    ctx = Context()
    # Before anything is held: a command that cannot run is refused.
    program = supervise.resolve(command, activation.command_path(ctx.shims(), os.environ.get("PATH", "")))
    # The command is forked first and held before its exec, so that one
    # step makes both genv run and the command the environment's terminals:
    # the environment lives exactly as long as either of them.
    child = supervise.Child(program, command, hold=True)
    entered: Optional[operations.Entered] = None
    try:
        entered = operations.enter(ctx, chosen, os.environ, also=[child.pid], sleeping=child.mask)
        environ = dict(os.environ)
        activation.apply(entered.plan, environ)
        child.release(environ)
    except BaseException:
        child.abandon()  # the command never runs
        if entered is not None:
            operations.leave(ctx, entered)
        raise
    try:
        status = child.supervise()
    finally:
        operations.leave(ctx, entered)
    return supervise.ended(status)
