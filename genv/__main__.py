"""``python -m genv <command> [<args>]``: a Python command of genv on this
interpreter (as ``genv <command>`` on genv's own), e.g. ``python -m genv
kernel install`` with the Python of your notebooks, or where only the
package was installed with pip. ``python -m genv <command> --help`` prints
the command's help, read from the same header as ``genv help <command>``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import List, Optional

NAMES = ("envs", "devices", "ps", "status", "home", "lock", "run", "enforce", "monitor", "kernel", "ssh")


def libexec() -> str:
    """The commands' files: in the package when installed with pip, else in
    the clone the package belongs to."""
    here = os.path.dirname(os.path.realpath(__file__))
    packaged = os.path.join(here, "libexec")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here), "libexec")


def help_of(path: str) -> str:
    """A command's help from its header, as ``genv help <command>`` prints it:
    the usage lines first, then the text, ``# `` prefixes removed."""
    lines: List[str] = []
    section = ""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        handle.readline()  # the shebang
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith("# Summary: "):
                section = "summary"
            elif line.startswith("# Usage: "):
                section = "usage"
                lines.append("Usage: %s" % line[len("# Usage: "):])
            elif line == "#":
                if section in ("usage", "text"):
                    lines.append("")
                if section == "usage":
                    section = "text"
            elif line.startswith("# "):
                if section == "usage":
                    lines.append("       %s" % line[1:].lstrip(" "))
                else:
                    section = "text"
                    lines.append(line[2:])
            else:
                break
    return "".join(line + "\n" for line in lines)


def command_file(name: str) -> Optional[str]:
    for candidate in ("genv-" + name, "genv-sh-" + name):
        path = os.path.join(libexec(), candidate)
        if os.path.isfile(path):
            return path
    return None


def main() -> None:
    from .cli import run

    if len(sys.argv) < 2 or sys.argv[1] not in NAMES:
        sys.stderr.write("usage: python -m genv {%s} [<args>]\n" % "|".join(NAMES))
        raise SystemExit(1)
    name = sys.argv.pop(1)
    arguments = sys.argv[1:]
    options = arguments[:arguments.index("--")] if "--" in arguments else arguments
    if arguments[:1] != ["--complete"] and ("-h" in options or "--help" in options):
        path = command_file(name)
        if path is None:
            sys.stderr.write("genv: no help for %s: genv's libexec folder is missing\n" % name)
            raise SystemExit(1)
        sys.stdout.write(help_of(path))
        sys.stdout.flush()
        raise SystemExit(0)
    import importlib

    command = importlib.import_module("genv.commands." + name)
    run(command.main, getattr(command, "complete", None))


if __name__ == "__main__":
    main()
