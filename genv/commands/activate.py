"""genv activate: put this terminal in an environment (new, or joined by id)."""

from __future__ import annotations

from .. import environments, project
from ..cli import Context, complete_options, env_ids, err, parse
from ..errors import GenvError
from ..gpus import parse_count
from ..shell import SNAPSHOT, Script, prompt_name, snapshot, sync
from ._session import Session, emit, request_of, shims

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

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


def _settings(opts: Dict[str, Any]) -> Dict[str, Any]:
    """The configuration given on the command line."""
    settings: Dict[str, Any] = {}
    if "--name" in opts:
        settings["name"] = environments.check_text(opts["--name"], "name")
    if "--gpus" in opts:
        settings["gpus"] = parse_count(opts["--gpus"], "GPU count")
    return settings


def _saved() -> Dict[str, Any]:
    """The project's saved configuration, if any (only for a new environment)."""
    home = project.find_home()
    if home is None:
        return {}
    try:
        return project.load(home) or {}
    except GenvError as error:
        raise GenvError("%s (activate with --no-load to skip it)" % error) from None


def _attach(session: Session, owner: int, env: Dict[str, Any], before: Dict[str, Any]) -> Optional[str]:
    """Attach; a cap refusal changes nothing (the configuration goes back to
    ``before``), and the terminal stays activated with what it has."""
    from ..policy import CapExceeded

    try:
        return session.attach(owner, env, request_of(env["config"]))
    except CapExceeded as error:
        env["config"] = before
        return str(error)


def _join(session: Session, eid: str, settings: Dict[str, Any], pid: int, token: str,
          attach: bool) -> Tuple[int, Dict[str, Any], Optional[str]]:
    found = environments.find(session.users, eid)
    if found is None:
        raise GenvError("there is no environment %s (it may have ended; 'genv envs' lists the live ones)" % eid)
    owner, env = found
    environments.check_owner(owner, session.ctx.euid, eid, session.ctx.describe)
    environments.add_terminal(env, pid, token)
    if owner != session.ctx.euid:  # root joins a user's environment
        environments.record_join(session.users, owner, env, pid, token)
        session.tx.changed(session.ctx.euid)
    before = dict(env["config"])
    env["config"].update(settings)
    session.tx.changed(owner)
    failure = _attach(session, owner, env, before) if attach else None
    return owner, env, failure


def _create(session: Session, config: Dict[str, Any], pid: int, token: str,
            attach: bool) -> Tuple[int, Dict[str, Any], Optional[str]]:
    owner = session.ctx.euid
    env = environments.new_env(environments.new_id(session.users, pid), session.now, config, pid, token)
    session.tx.user(owner)["envs"].append(env)
    session.tx.changed(owner)
    failure = _attach(session, owner, env, dict(env["config"])) if attach else None
    return owner, env, failure


def _script(ctx: Context, env: Dict[str, Any], prompt: bool) -> bytes:
    script = Script()
    script.export(SNAPSHOT, snapshot())
    script.export("GENV_ENVIRONMENT_ID", env["id"])
    script.call("_genv_path_add", shims(ctx))
    sync(script, env)
    if prompt:
        prompt_name(script, env, "_genv_prompt_set")
    return script.encode()


def main(argv: List[str]) -> int:
    opts, _ = parse(argv, OPTIONS, 0)
    ctx = Context()
    if ctx.eid is not None:
        raise GenvError("this terminal is already in environment %s; run 'genv deactivate' first" % ctx.eid)
    eid: Optional[str] = environments.check_text(opts["--id"], "environment id") if "--id" in opts else None
    settings = _settings(opts)
    ctx.refuse_in_subshell("activate")
    config = settings if eid is not None or "--no-load" in opts else {**_saved(), **settings}
    # A new environment with a GPU count attaches; joining attaches if
    # --gpus changes the count.
    attach = "--no-attach" not in opts and "gpus" in (settings if eid is not None else config)

    session = Session(ctx)
    pid, token = session.terminal()
    discovery: Optional[str] = None
    if attach:
        try:
            session.observe()
        except GenvError as error:
            discovery = str(error)

    with session:
        if eid is not None:
            owner, env, failure = _join(session, eid, settings, pid, token, attach and discovery is None)
        else:
            owner, env, failure = _create(session, config, pid, token, attach and discovery is None)
        if attach and discovery is not None:
            failure = discovery
        session.deliver_warnings(owner, env)
        payload = _script(ctx, env, "--no-prompt" not in opts)
    emit(payload)
    if failure is not None:
        err("activated environment %s, but could not attach GPUs: %s" % (env["id"], failure))
        return 1
    return 0
