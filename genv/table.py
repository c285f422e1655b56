"""Tables and times for people to read (``genv envs``, ``genv devices``,
``genv status``)."""

from __future__ import annotations

from .text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Optional, Sequence


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(header)] + [[printable(cell) for cell in row] for row in rows]
    columns = len(header)
    widths = [max(len(row[column]) for row in cells) for column in range(columns - 1)]
    template = "  ".join("%%-%ds" % width for width in widths) + "  %s"
    return "".join((template % tuple(row)).rstrip() + "\n" for row in cells)


FORMULA_STARTS = ("=", "+", "-", "@")
"""What makes a spreadsheet take a CSV cell for a formula (OWASP, "CSV
injection"; tab and carriage return, the others it lists, are escaped)."""


def csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180: a header row, CRLF line ends, fields with a comma, a quote
    or a line break quoted (quotes doubled). ``None`` is an empty field.
    Text passes the escaper, as everywhere a person may read it, and text
    that starts (after any spaces) like a formula gets a ``'`` in front, so
    that a spreadsheet shows it as text and never runs it. Numbers are
    genv's own and written as they are."""

    def field(value: Any) -> str:
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = printable(value)
            if text.lstrip(" ").startswith(FORMULA_STARTS):
                text = "'" + text
        else:
            text = str(value)
        if any(c in text for c in ',"\r\n') or text != text.strip():
            return '"' + text.replace('"', '""') + '"'
        return text

    return "".join(",".join(field(value) for value in row) + "\r\n" for row in [header, *rows])


def size(mib: Any) -> str:
    """A MiB amount for people: ``40960MiB``; ``-`` when unknown."""
    return "-" if mib is None else "%dMiB" % mib


def ago(seconds: float) -> str:
    if not 0 <= seconds < 1e12:  # a clock step, or a time from the future
        return "just now" if seconds < 0 else "long ago"
    seconds = int(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = seconds // size
            return "%d %s%s ago" % (count, unit, "" if count == 1 else "s")
    return "just now"


def idle_text(seconds: Optional[float]) -> str:
    """``3h``: idle for at least a minute (in its largest unit); empty while
    in use, holding nothing, or just attached."""
    from .sizes import format_duration

    if seconds is None or seconds < 60:
        return ""
    return format_duration(seconds).split(" ")[0]


def until_text(until: Optional[float], now: float) -> str:
    """``in 1h 59m``: when the reservation ends; empty without an end."""
    from .sizes import format_duration

    if until is None:
        return ""
    return "in %s" % format_duration(until - now, up=True) if until > now else "now"
