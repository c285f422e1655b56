"""genv activate: put this terminal in an environment (new, or joined by id)."""

from __future__ import annotations

from .. import envs, project
from ..cli import Context, complete_options, env_ids, err, parse
from ..devices import parse_count
from ..errors import GenvError
from ..shell import SNAPSHOT, Script, emit, quote, snapshot, sync
from ._session import Session, shims

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = {
    "--id": True,
    "--name": True,
    "--gpus": True,
    "--no-load": False,
    "--no-attach": False,
    "--no-prompt": False,
}


def complete(words: List[str]) -> List[str]:
    return complete_options(words, OPTIONS, {"--id": env_ids})


def main(argv: List[str]) -> int:
    opts, _ = parse(argv, OPTIONS, 0)
    ctx = Context()
    if ctx.eid is not None:
        raise GenvError(
            "this terminal is already in environment %s; run 'genv deactivate' first" % ctx.eid
        )
    eid: Optional[str] = envs.check_text(opts["--id"], "environment id") if "--id" in opts else None
    flags: Dict[str, Any] = {}
    if "--name" in opts:
        flags["name"] = envs.check_text(opts["--name"], "name")
    if "--gpus" in opts:
        flags["gpus"] = parse_count(opts["--gpus"], "GPU count")
    loaded: Dict[str, Any] = {}
    if "--no-load" not in opts:
        home = project.find_home()
        if home is not None:
            try:
                loaded = project.load(home) or {}
            except GenvError as error:
                raise GenvError("%s (activate with --no-load to skip it)" % error) from None

    session = Session(ctx)
    pid = ctx.shell_pid()
    token = session.processes.token(pid)
    if token is None:
        raise GenvError("cannot find this terminal's shell process (pid %d)" % pid)

    # Only a new environment with a GPU count attaches (joining never does).
    may_attach = "--no-attach" not in opts and ("gpus" in flags or "gpus" in loaded)
    discovery_error: Optional[str] = None
    if may_attach:
        try:
            session.discover()
        except GenvError as error:
            discovery_error = str(error)

    attach_error: Optional[str] = None
    with session:
        found = envs.find(session.users, eid) if eid is not None else None
        if found is not None:
            owner, env = found
            envs.check_owner(owner, ctx.euid, env["id"], ctx.describe)
            envs.add_terminal(env, pid, token)
            env["config"].update(flags)
            session.tx.changed(owner)
        else:
            owner = ctx.euid
            if eid is None:
                eid = envs.new_id(session.users, pid)
            env = envs.new_env(eid, session.now, {**loaded, **flags}, pid, token)
            session.tx.user(owner)["envs"].append(env)
            session.tx.changed(owner)
            gpus = env["config"].get("gpus")
            if gpus is not None and "--no-attach" not in opts:
                if discovery_error is not None:
                    attach_error = discovery_error
                else:
                    try:
                        envs.allocate(session.users, env, session.machine, gpus, session.now)
                    except GenvError as error:
                        attach_error = str(error)
        session.deliver_warnings(owner, env)

    script = Script()
    script.export(SNAPSHOT, snapshot())
    script.export("GENV_ENVIRONMENT_ID", env["id"])
    script.trusted("_genv_path_add %s" % quote(shims(ctx)))
    sync(script, env)
    if "--no-prompt" not in opts:
        name = env["config"].get("name")
        if name is None:
            script.unset("_GENV_PROMPT_NAME")
        else:
            script.assign("_GENV_PROMPT_NAME", name)
        script.trusted("_genv_prompt_set")
    emit(script)
    if attach_error is not None:
        err("activated environment %s, but could not attach GPUs: %s" % (env["id"], attach_error))
        return 1
    return 0
