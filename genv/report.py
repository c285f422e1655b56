"""Messages for people: the one way genv's code tells what happened.

A command prints ``genv: <message>`` on stderr; the SDK (a library prints
nothing) sends the same text to the logger ``"genv"``, for the duration of
a call (it sets ``SINK``). Modules below the command line call ``warn``
and never import the command line. Control characters in a message (from a
name or an id) are escaped so that they cannot act on the terminal.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Callable, Optional

SINK: ContextVar[Optional[Callable[[str], None]]] = ContextVar("genv_messages", default=None)


def warn(text: str) -> None:
    """One message: a line on stderr, or to the sink the caller set."""
    from .text import printable

    sink = SINK.get()
    if sink is not None:
        sink(printable(text))
        return
    sys.stderr.buffer.write(("genv: %s\n" % printable(text)).encode("utf-8", "backslashreplace"))
    sys.stderr.flush()
