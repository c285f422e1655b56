"""Tables and times for people to read (``genv envs``, ``genv devices``)."""

from __future__ import annotations

from .text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Sequence


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(header)] + [[printable(cell) for cell in row] for row in rows]
    columns = len(header)
    widths = [max(len(row[column]) for row in cells) for column in range(columns - 1)]
    template = "  ".join("%%-%ds" % width for width in widths) + "  %s"
    return "".join((template % tuple(row)).rstrip() + "\n" for row in cells)


def ago(seconds: float) -> str:
    if not 0 <= seconds < 1e12:  # a clock step, or a time from the future
        return "just now" if seconds < 0 else "long ago"
    seconds = int(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = seconds // size
            return "%d %s%s ago" % (count, unit, "" if count == 1 else "s")
    return "just now"
