"""genv home: the .genv folder whose saved configuration applies here."""

from typing import List

from .. import project
from ..cli import out, parse


def complete(words: List[str]) -> List[str]:
    return []


def main(argv: List[str]) -> int:
    parse(argv, {}, 0)
    out(project.require_home() + "\n")
    return 0
