"""The two clocks of genv's times: the wall clock for people, the boot clock
for deadlines.

- ``wall()``: Unix time, for what people read (when an environment was
  created, when a GPU was attached) and for the state files' cache times.
- ``boot()``: seconds since boot (CLOCK_BOOTTIME, which counts a suspend),
  for what must not move when someone sets the wall clock: reservation ends
  (``attach --for``), idle times, and what root-run genv commands saw. A
  boot ends every environment anyway (a terminal's token holds the boot id),
  and the times root keeps carry the boot they were taken in.

``GENV_TEST_CLOCK=BOOT[:WALL]`` adds whole seconds (possibly negative) to
each clock, so that tests can let hours pass, or set the wall clock back or
forward, without sleeping and without touching the machine's clock. It
moves only the view of the commands that have it in their environment: a
user who sets it can end their own reservations early, or take GPUs others
hold as a hand-edited state file could, which ``genv enforce`` (run by root,
in root's own environment) resolves (docs/state.md, "Threat model"). The
shell function reads the same variable for its prompt check.
"""

from __future__ import annotations

import os
import time

from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Tuple

VARIABLE = "GENV_TEST_CLOCK"


def _offsets() -> Tuple[int, int]:
    text = os.environ.get(VARIABLE)
    if not text:
        return 0, 0
    parts = text.split(":")
    try:
        if len(parts) > 2 or not all(part.lstrip("-").isdigit() and len(part) < 12 for part in parts):
            raise ValueError(text)
        values = [int(part) for part in parts]
    except ValueError:
        raise GenvError("invalid %s %r: expected BOOT or BOOT:WALL, whole seconds to add to each clock"
                        % (VARIABLE, text)) from None
    return values[0], values[1] if len(values) > 1 else 0


def _boot_raw() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def boot() -> float:
    """Seconds since boot (see the module's docstring)."""
    return _boot_raw() + _offsets()[0]


def wall() -> float:
    """Unix time (see the module's docstring)."""
    return time.time() + _offsets()[1]


def boot_from_wall(stamp: float, wall_now: float, boot_now: float) -> float:
    """A Unix time on the boot clock, as of the two readings given."""
    return stamp - wall_now + boot_now


def wall_from_boot(stamp: float, wall_now: float, boot_now: float) -> float:
    """A boot-clock time as Unix time, as of the two readings given."""
    return stamp - boot_now + wall_now
