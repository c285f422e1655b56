"""JSON without the cost of ``import json``.

``json`` pulls in ``re`` and ``enum`` (about 8 ms per start on a small
machine, as long as the interpreter itself). The C accelerator ``_json``
that ``json`` uses underneath needs neither, so this module drives it
directly and falls back to ``json`` where ``_json`` is missing.
Output is compact and ASCII-only: strings that carry undecodable bytes
(surrogate escapes) survive a round trip.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any


try:
    import _json
except ImportError:  # pragma: no cover - every CPython has it
    _json = None  # type: ignore[assignment]


class JSONError(ValueError):
    """Text that is not valid JSON."""


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise JSONError("invalid constant %s" % name)


_WHITESPACE = " \t\n\r"


def loads(text: str) -> Any:
    """Parse one JSON document; raise JSONError on anything else."""
    if _json is None:  # pragma: no cover
        import json

        try:
            return json.loads(text)
        except ValueError as error:
            raise JSONError(str(error)) from None
    scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    start = 0
    length = len(text)
    while start < length and text[start] in _WHITESPACE:
        start += 1
    try:
        value, end = scan(text, start)
    except (StopIteration, ValueError, SystemError, RecursionError):
        # The accelerator reports errors through json.decoder, which is not
        # loaded here; errors are rare (a damaged file), so let json explain.
        _explain(text)
    while end < length and text[end] in _WHITESPACE:
        end += 1
    if end != length:
        raise JSONError("extra data at offset %d" % end)
    return value


def _explain(text: str) -> None:
    import json

    try:
        json.loads(text)
    except (ValueError, RecursionError) as error:
        raise JSONError(str(error)) from None
    raise JSONError("invalid JSON")  # pragma: no cover


def _reject(value: Any) -> Any:
    raise TypeError("cannot store %s in JSON" % type(value).__name__)


def dumps(value: Any) -> str:
    """Serialise to compact, ASCII-only JSON (keys kept in insertion order)."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    encode = _json.make_encoder(
        {},  # markers: detect cycles
        _reject,
        _json.encode_basestring_ascii,
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
    return "".join(encode(value, 0))
