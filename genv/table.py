"""Tables and times for people to read (``genv envs``, ``genv devices``)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Sequence


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def printable(text: str) -> str:
    """Show control characters as escapes: another user's name must not be
    able to move the cursor or change colours in your terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    result = []
    for char in text:
        if char in _ESCAPES:
            result.append(_ESCAPES[char])
        elif not char.isprintable():
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
                result.append("\\x%02x" % (code - 0xDC00))
            elif code < 0x100:
                result.append("\\x%02x" % code)
            else:
                result.append("\\u%04x" % code)
        else:
            result.append(char)
    return "".join(result)


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(header)] + [[printable(cell) for cell in row] for row in rows]
    columns = len(header)
    widths = [max(len(row[column]) for row in cells) for column in range(columns - 1)]
    template = "  ".join("%%-%ds" % width for width in widths) + "  %s"
    return "".join((template % tuple(row)).rstrip() + "\n" for row in cells)


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = seconds // size
            return "%d %s%s ago" % (count, unit, "" if count == 1 else "s")
    return "just now"
