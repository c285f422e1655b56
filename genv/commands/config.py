"""genv config: show, set, clear, save and load the environment's configuration.

Inside an environment it works on the environment's configuration (and
``--save`` writes all of it to the project). Outside one it works on the
project's saved configuration: ``genv config gpus 2 --save`` changes it and
``genv config`` shows it.
"""

from __future__ import annotations

import os

from .. import options, project
from ..core import operations
from ..core.context import Context
from ..errors import GenvError, UsageError
from ..shell import Script, emit, render
from ..text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional

OPTIONS: options.Spec = {"--clear": options.FLAG, "--save": options.FLAG, "--load": options.FLAG}
# The fields as typed on the command line, and their keys in config files.
FIELDS = {"gpus": "gpus", "name": "name", "gpu-memory": "gpu_memory"}


def complete(words: List[str]) -> List[str]:
    fields = [word for word in words if word in FIELDS]
    candidates = options.complete(words, OPTIONS, {})
    return candidates + ([] if fields else list(FIELDS))


class Action:
    """What the command line asks for."""

    def __init__(self, argv: List[str]) -> None:
        opts, args = options.parse(argv, OPTIONS, 2)
        if args and args[0] not in FIELDS:
            raise UsageError("unknown field %r (fields: %s)" % (args[0], ", ".join(FIELDS)))
        self.field: Optional[str] = FIELDS[args[0]] if args else None
        self.value: Optional[Any] = options.config_value(self.field, args[1]) if self.field and len(args) > 1 else None
        self.clear, self.save, self.load = "--clear" in opts, "--save" in opts, "--load" in opts
        if self.clear and self.value is not None:
            raise UsageError("--clear takes no value")
        if self.load and (self.field is not None or self.clear or self.save):
            raise UsageError("--load takes no field and cannot be combined with --clear or --save")

    @property
    def changes(self) -> bool:
        return self.clear or self.value is not None or self.load

    def apply(self, config: Dict[str, Any]) -> None:
        if self.clear:
            if self.field is None:
                config.clear()
            else:
                config.pop(self.field, None)
        elif self.value is not None:
            config[self.field] = self.value  # type: ignore[index]


def _text(field: str, value: Any) -> str:
    if field == "gpu_memory":
        from ..sizes import format_size

        return format_size(value)
    return str(value)


def _query(script: Script, config: Dict[str, Any], field: Optional[str]) -> None:
    """One field's value as it is (escaped only on a terminal), or every
    field for people (escaped)."""
    if field is not None:
        if field in config:
            text = _text(field, config[field])
            script.echo_value(text, printable(text))
        return
    for name, key in FIELDS.items():
        script.echo("%s: %s" % (name, printable(_text(key, config[key])) if key in config else "(not set)"))


def _project_only(ctx: Context, action: Action) -> int:
    """Outside an environment: the project's saved configuration."""
    if action.load:
        raise GenvError("this terminal is not in an environment: nothing to load into "
                        "('genv activate' loads the saved configuration)")
    if action.changes and not action.save:
        raise GenvError("this terminal is not in an environment; run 'genv activate' first, "
                        "or add --save to change the project's saved configuration")
    if action.save and not action.changes:
        raise GenvError("this terminal is not in an environment: nothing to save")
    home = project.require_home()
    config = project.load(home) or {}
    script = Script()
    if action.changes:
        ctx.refuse_in_subshell("config")
        action.apply(config)
        payload = script.encode()
        project.save(home, config)
    else:
        _query(script, config, action.field)
        payload = script.encode()
    emit(payload)
    return 0


def main(argv: List[str]) -> int:
    action = Action(argv)
    ctx = Context()
    if ctx.eid is None:
        return _project_only(ctx, action)
    eid = ctx.eid
    if action.changes or action.save:
        ctx.refuse_in_subshell("config")
    home = project.require_home() if action.save or action.load else None
    loaded: Optional[Dict[str, Any]] = None
    if action.load:
        assert home is not None
        loaded = project.load(home)
        if loaded is None:
            raise GenvError("nothing saved yet in %s/%s; save with 'genv config --save'" % (home, project.CONFIG))

    def change(config: Dict[str, Any]) -> bool:
        if loaded is not None:
            config.clear()
            config.update(loaded)
        action.apply(config)
        return bool(action.changes)

    outcome = operations.configure(ctx, eid, os.environ, change)
    assert outcome.env is not None
    script = Script()
    if not action.changes and not action.save:
        _query(script, outcome.env["config"], action.field)
    if action.save:
        assert home is not None
        project.save(home, outcome.env["config"])
    render(outcome, script)
    return 0
