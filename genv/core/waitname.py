"""This process's name in the kernel while it waits in line.

A place in line counts only while the kernel says its process waits in genv
(docs/sharing.md, "The line"): genv's waiter names itself
``environments.WAITING_NAME`` in ``/proc/self/comm``, which any user can read
back, and gives its old name back when it stops waiting (the SDK waits in
the user's own process). Apart from the line, so that a command that never
waits imports nothing of it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Optional


class Name:
    """This process's name in the kernel while it waits in line:
    ``environments.WAITING_NAME`` from ``waiting()`` (before its place is
    written) to ``restore()`` (after it is gone), then the name it had (the
    SDK waits in the user's own process). Nothing happens where the name
    cannot be set."""

    PATH = "/proc/self/comm"  # the whole process's (the thread group leader's), from any thread

    def __init__(self) -> None:
        self.before: Optional[bytes] = None

    def waiting(self) -> None:
        if self.before is None:
            try:
                with open(self.PATH, "rb") as handle:
                    before = handle.read().rstrip(b"\n")
                from ..environments import WAITING_NAME

                with open(self.PATH, "wb") as handle:
                    handle.write(WAITING_NAME.encode())
            except OSError:
                return
            self.before = before

    def restore(self) -> None:
        if self.before is not None:
            try:
                with open(self.PATH, "wb") as handle:
                    handle.write(self.before)
            except OSError:
                pass
            self.before = None
