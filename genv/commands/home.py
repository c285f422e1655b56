"""genv home: the .genv folder whose saved configuration applies here."""

from __future__ import annotations

from .. import options, project
from ..cli import out
from ..text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    options.parse(argv, {}, 0)
    out(printable(project.require_home()) + "\n")
    return 0
