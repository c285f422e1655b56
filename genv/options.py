"""Command-line options: one spec for every command, values checked once.

argparse costs about as much as the interpreter's start-up, so commands
declare their options in a dict, name -> kind:

- ``FLAG`` (False): ``--x``, no value;
- ``VALUE`` (True): ``--x VALUE`` or ``--x=VALUE``;
- an ``OptionalValue``: ``--x``, ``--x=VALUE``, or ``--x VALUE`` when the
  next word is not an option (``--wait``, ``--wait 30``, ``--wait forever``
  and ``--wait=forever`` are one option everywhere; ``--wait --`` is a bare
  ``--wait``);
- a string: another spelling of the option it names (``-o`` for
  ``--over-subscribe``); the value is stored under that name.

``--`` ends the options. Values that mean the same in several commands
(``--wait``, ``--index``, counts) are parsed here, once.
"""

from __future__ import annotations

from .errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

    Kind = Union[bool, str, "OptionalValue"]
    Spec = Mapping[str, Kind]

FLAG = False
VALUE = True


class OptionalValue:
    """An option whose value may be left out: a following word is its value
    unless it is an option (``-x``; ``-5`` is a value, to be refused as one)."""

    __slots__ = ()

    def takes(self, word: str) -> bool:
        return not word.startswith("-") or word[1:2].isdigit()


FOREVER = "forever"
WAIT = OptionalValue()
"""``--wait [SECONDS|forever]``: without a value, as long as it takes."""


def parse(argv: Sequence[str], spec: Spec, max_positional: int) -> Tuple[Dict[str, Any], List[str]]:
    """The options (name -> value; True for a flag, None for an optional
    value left out) and the positional arguments."""
    values: Dict[str, Any] = {}
    positional: List[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            positional.extend(argv[index:])
            break
        if not (arg.startswith("-") and len(arg) > 1 and not arg[1:].isdigit()):
            positional.append(arg)
            continue
        given, has_value, value = arg.partition("=")
        if given not in spec:
            raise UsageError("unknown option %r" % given)
        kind = spec[given]
        name = given
        if isinstance(kind, str):
            name, kind = kind, spec[kind]
        stored: Any
        if kind is FLAG:
            if has_value:
                raise UsageError("option %s takes no value" % given)
            stored = True
        elif has_value:
            stored = value
        elif isinstance(kind, OptionalValue):
            stored = None
            if index < len(argv) and kind.takes(argv[index]):
                stored = argv[index]
                index += 1
        else:
            if index >= len(argv):
                raise UsageError("option %s needs a value" % given)
            stored = argv[index]
            index += 1
        if name in values:
            raise UsageError("option %s given twice" % given)
        values[name] = stored
    if len(positional) > max_positional:
        raise UsageError("unexpected argument %r" % positional[max_positional])
    return values, positional


def wait_seconds(value: Optional[str], option: str = "--wait") -> float:
    """``--wait``'s value as seconds: ``inf`` when left out or ``forever``."""
    if value is None or value == FOREVER:
        return float("inf")
    from .sizes import parse_seconds

    return parse_seconds(value, option, error=UsageError)


def wait_text(value: Optional[str], option: str = "--wait") -> str:
    """``--wait``'s value as it can be given again (checked): ``forever``,
    or the number as it was written (``123456789`` stays that)."""
    seconds = wait_seconds(value, option)
    return FOREVER if seconds == float("inf") else str(value)


FOR = "--for"
"""``--for DURATION``: hold the GPUs until now + DURATION (attach, run, kernel)."""


def reserve_seconds(value: str, option: str = FOR) -> float:
    """``--for``'s value as seconds: ``90m``, ``2h``, ``1d`` or a number of
    seconds (``sizes.parse_duration``)."""
    from .sizes import parse_duration

    return parse_duration(value, option, error=UsageError)


def indices(text: str, option: str = "--index") -> List[int]:
    """``--index 0,2``: GPU indices, each once."""
    from .gpus import parse_count

    parts = text.split(",")
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UsageError("invalid %s %r: expected GPU indices such as 0 or 0,2" % (option, text))
    found = [parse_count(part, "GPU index") for part in parts]
    seen = set()
    for index in found:
        if index in seen:
            raise UsageError("invalid %s %r: GPU %d is named twice" % (option, text, index))
        seen.add(index)
    return found


CONFIG = {"--gpus": "gpus", "--gpu-memory": "gpu_memory", "--name": "name"}
"""The options that set an environment's configuration, and their fields."""


def config_value(field: str, text: str) -> Any:
    """A configuration field's value from its text (``gpus``,
    ``gpu_memory``, ``name``)."""
    if field == "gpus":
        from .gpus import parse_count

        return parse_count(text, "GPU count")
    if field == "gpu_memory":
        from .sizes import parse_size

        return parse_size(text, "GPU memory")
    from .environments import check_text

    return check_text(text, "name")


def configuration(opts: Mapping[str, Any]) -> Dict[str, Any]:
    """The configuration that ``--gpus``, ``--gpu-memory`` and ``--name`` in
    ``opts`` give."""
    return {field: config_value(field, opts[option]) for option, field in CONFIG.items() if option in opts}


def complete(words: List[str], spec: Spec, values: Dict[str, Any]) -> List[str]:
    """Candidates after ``words``: an option's values, or the unused options
    (an option given under one spelling is used under every other)."""

    def name(option: str) -> str:
        kind = spec[option]
        return kind if isinstance(kind, str) else option

    if words and words[-1] in spec and spec[name(words[-1])] is not FLAG:
        supplier = values.get(name(words[-1]))
        return supplier() if supplier else []
    used = set(name(word.partition("=")[0]) for word in words if word.partition("=")[0] in spec)
    return [option for option in spec if name(option) not in used]
