"""Amounts as people write them: memory sizes (``4g``, ``4096m``,
``4GiB``, ``4.5g``) and durations (``90m``, ``2h``, ``1d``, or seconds).

A size is a number with an optional unit: ``b``, ``k``, ``m``, ``g``, ``t``
(powers of 1024, as nvidia-smi's MiB are), also written ``kb``/``kib``,
``mb``/``mib``, ``gb``/``gib``, ``tb``/``tib``, in any case. A bare number is
bytes. The value must be a whole number of bytes, at least 1 MiB
(nvidia-smi's unit: a smaller share would show as 0 everywhere) and at most
1 PiB. A size is printed back in the largest unit that keeps it whole.

A duration is a number with an optional unit: ``s``, ``m``, ``h``, ``d``
(seconds, minutes, hours, days; a bare number is seconds), above 0 and at
most ``limits.MAX_SECONDS``. ``format_duration`` prints one back for people
(``2h``, ``1h 30m``, ``45s``).
"""

from __future__ import annotations

import os

from .errors import GenvError
from .limits import MAX_SECONDS, MAX_SIZE, MIN_SIZE

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Dict, List

MIB = 1 << 20

_UNITS: Dict[str, int] = {"": 0, "b": 0}
for _power, _letter in enumerate("kmgt", start=1):
    for _spelling in (_letter, _letter + "b", _letter + "ib"):
        _UNITS[_spelling] = _power


def parse_size(text: str, what: str = "size") -> int:
    """Bytes, or GenvError with one line saying what is wrong."""
    word = text.lower() if text.isascii() else text
    number = word.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = word[len(number) :]
    whole, dot, fraction = number.partition(".")
    if (
        not text.isascii()
        or unit not in _UNITS
        or not whole.isdigit()
        or (dot and not fraction.isdigit())
    ):
        raise GenvError(
            "invalid %s %r: expected a number with an optional unit b, k, m, g or t (e.g. 4g, 4096m, 4.5GiB)"
            % (what, text)
        )
    whole = whole.lstrip("0")  # (before int(), which refuses more than 4300 digits)
    if len(whole) > 20:
        raise GenvError("invalid %s %r: more than 1 PiB" % (what, text))
    fraction = fraction.rstrip("0")
    if len(fraction) > 40:  # 1 TiB is 2**40 bytes: more decimals cannot give whole bytes
        raise GenvError("invalid %s %r: not a whole number of bytes" % (what, text))
    scale = 1 << (10 * _UNITS[unit])
    digits = int(whole + fraction or "0")
    denominator = 10 ** len(fraction)
    if (digits * scale) % denominator:
        raise GenvError("invalid %s %r: not a whole number of bytes" % (what, text))
    value: int = digits * scale // denominator
    if value <= 0:
        raise GenvError("invalid %s %r: it must be more than 0" % (what, text))
    if value < MIN_SIZE:
        raise GenvError("invalid %s %r: less than 1 MiB (1m), nvidia-smi's unit; a bare number is bytes"
                        % (what, text))
    if value > MAX_SIZE:
        raise GenvError("invalid %s %r: more than 1 PiB" % (what, text))
    return value


def format_size(value: int) -> str:
    """The largest unit that keeps the value whole: 4g, 4608m, 1536b."""
    for letter, power in (("t", 4), ("g", 3), ("m", 2), ("k", 1)):
        scale = 1 << (10 * power)
        if value % scale == 0:
            return "%d%s" % (value // scale, letter)
    return "%db" % value


def mib(value: int) -> int:
    """Bytes to whole MiB, rounded down (nvidia-smi's unit)."""
    return value // MIB


def env_seconds(name: str, default: float, least: float = 0.0, hint: str = "") -> float:
    """The seconds the variable ``name`` gives (``parse_seconds``), or
    ``default`` when it is unset or empty."""
    text = os.environ.get(name)
    return parse_seconds(text, name, least, hint) if text else default


def parse_seconds(text: str, what: str, least: float = 0.0, hint: str = "", error: type = GenvError) -> float:
    """A number of seconds (from an option or a variable): finite, at least
    ``least``; otherwise ``error`` (GenvError or UsageError) saying so."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not least <= value < MAX_SECONDS:  # also false for nan
        raise error("invalid %s %r: expected a number of seconds%s%s" % (
            what, text, " of at least %g" % least if least > 0 else "", " (%s)" % hint if hint else ""))
    return value



_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str, error: type = GenvError) -> float:
    """Seconds, from ``90m``, ``2h``, ``1d``, ``1.5h``, ``30s`` or a bare
    number of seconds: above 0, at most ``limits.MAX_SECONDS``; otherwise
    ``error`` with one line saying what is wrong."""
    word = text.strip().lower() if text.isascii() else ""
    number = word.rstrip("smhd")
    unit = word[len(number):]
    whole, dot, fraction = number.partition(".")
    if (unit not in _DURATION_UNITS or not (whole.isdigit() or (dot and not whole)) or (dot and not fraction.isdigit())
            or len(whole.lstrip("0")) > 12 or len(fraction) > 12):
        raise error("invalid %s %r: expected a duration such as 90m, 2h, 1d or a number of seconds" % (what, text))
    value = float(number) * _DURATION_UNITS[unit]
    if not 0 < value <= MAX_SECONDS:
        raise error("invalid %s %r: it must be more than 0 and at most %d seconds" % (what, text, MAX_SECONDS))
    return value


def format_duration(seconds: float, up: bool = False) -> str:
    """A duration for people, in its two largest units: ``2h``, ``1h 30m``,
    ``3d 4h``, ``45s`` (rounded down to the second; ``up``: a time left,
    rounded up to the minute past the first one, so that ``2h`` is ``2h``
    until it is ``1h 59m``)."""
    left = int(max(0.0, seconds))
    if up and seconds > 60:
        left = -int(-seconds // 60) * 60
    parts: List[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append("%d%s" % (left // size, unit))
            left %= size
        elif parts:
            break
        if len(parts) == 2:
            break
    return " ".join(parts)
