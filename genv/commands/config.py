"""genv config: show, set, clear, save and load the environment's configuration."""

from __future__ import annotations

from .. import envs, project
from ..cli import Context, complete_options, parse
from ..devices import parse_count
from ..errors import GenvError, UsageError
from ..shell import Script, emit, sync
from ._session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS = {"--clear": False, "--save": False, "--load": False}


def complete(words: List[str]) -> List[str]:
    fields = [word for word in words if word in project.FIELDS]
    candidates = complete_options(words, OPTIONS, {})
    return candidates + ([] if fields else list(project.FIELDS))


def _value(field: str, text: str) -> Any:
    if field == "gpus":
        return parse_count(text, "GPU count")
    return envs.check_text(text, "name")


def main(argv: List[str]) -> int:
    opts, args = parse(argv, OPTIONS, 2)
    field: Optional[str] = args[0] if args else None
    if field is not None and field not in project.FIELDS:
        raise UsageError("unknown field %r (fields: %s)" % (field, ", ".join(project.FIELDS)))
    value: Optional[Any] = _value(field, args[1]) if field is not None and len(args) > 1 else None
    clear, save, load = "--clear" in opts, "--save" in opts, "--load" in opts
    if clear and value is not None:
        raise UsageError("--clear takes no value")
    if load and (field is not None or clear):
        raise UsageError("--load takes no field and cannot be combined with --clear")
    ctx = Context()
    eid = ctx.require_active()
    home = project.require_home() if save or load else None
    loaded: Optional[Dict[str, Any]] = None
    if load:
        assert home is not None
        loaded = project.load(home)
        if loaded is None:
            raise GenvError("nothing saved yet in %s/%s; save with 'genv config --save'" % (home, project.CONFIG))

    script = Script()
    with Session(ctx) as session:
        owner, env = session.owned_env(eid)
        config = env["config"]
        changed = True
        if loaded is not None:
            env["config"] = config = dict(loaded)
        elif clear:
            if field is None:
                config.clear()
            else:
                config.pop(field, None)
        elif value is not None:
            config[field] = value  # type: ignore[index]
        else:
            changed = False
            if not save:
                if field is not None:
                    if field in config:
                        script.echo(str(config[field]))
                else:
                    for name in project.FIELDS:
                        script.echo("%s: %s" % (name, config[name] if name in config else "(not set)"))
        if changed:
            session.tx.changed(owner)
        session.deliver_warnings(owner, env)
        current = dict(config)
    if save:
        assert home is not None
        project.save(home, current)
    sync(script, env)
    emit(script)
    return 0
