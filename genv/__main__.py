"""``python -m genv <command> [<args>]``: a Python command of genv on this
interpreter (as ``genv <command>`` on genv's own), e.g. ``python -m genv
kernel install`` with the Python of your notebooks, or where only the
package was installed with pip."""

from __future__ import annotations

import sys


def main() -> None:
    from .cli import run

    names = ("envs", "devices", "ps", "status", "home", "lock", "run", "enforce", "monitor", "kernel")
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        sys.stderr.write("usage: python -m genv {%s} [<args>]\n" % "|".join(names))
        raise SystemExit(1)
    name = sys.argv.pop(1)
    import importlib

    command = importlib.import_module("genv.commands." + name)
    run(command.main, getattr(command, "complete", None))


if __name__ == "__main__":
    main()
