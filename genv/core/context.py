"""Who is calling, from which shell, in which environment."""

from __future__ import annotations

import os

from ..errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Dict, Optional


class Context:
    """The caller: effective uid, the environment its terminal is in
    (``GENV_ENVIRONMENT_ID``), genv's root folder, and whether genv runs as
    a library inside somebody else's process (the SDK: it must leave that
    process's signal handlers, mask and timers as they were)."""

    def __init__(self, library: bool = False) -> None:
        environ = os.environ
        self.euid = os.geteuid()
        self.eid: Optional[str] = environ.get("GENV_ENVIRONMENT_ID")
        self.library = library
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
        self.root = environ.get("GENV_ROOT") or here
        self._names: Dict[int, str] = {}

    def shell_pid(self) -> int:
        """The calling shell (the ``genv`` function says which), else the parent."""
        digits = os.environ.get("GENV_SHELL_PID", "").lstrip("0")
        if digits.isascii() and digits.isdigit() and len(digits) < 20:  # (int() refuses over 4300 digits)
            return int(digits)
        return os.getppid()

    def in_subshell(self) -> bool:
        """Run by the ``genv`` function from a subshell, a pipeline or
        ``$(...)``, where the shell it would change is not the user's."""
        return os.environ.get("GENV_SUBSHELL") == "1"

    def refuse_in_subshell(self, command: str) -> None:
        """Commands that change the state or the shell call this before
        changing anything."""
        if self.in_subshell():
            raise GenvError(
                "'genv %s' changes your shell, so it must run in the shell itself, not in a subshell, "
                "a pipeline or $(...); nothing was changed" % command
            )

    def require_active(self) -> str:
        if self.eid is None:
            raise GenvError("this terminal is not in an environment; run 'genv activate' first")
        return self.eid

    def user(self, uid: int) -> str:
        if uid not in self._names:
            import pwd

            try:
                self._names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._names[uid] = str(uid)
        return self._names[uid]

    def describe(self, uid: int) -> str:
        return "%s(%d)" % (self.user(uid), uid)

    def shims(self) -> str:
        """The folder of genv's nvidia-smi shim."""
        return os.path.join(self.root, "shims")
