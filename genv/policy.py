"""The admin's policy: caps per user and who enforcement leaves alone.

A JSON file at ``/etc/genv/policy.json`` (``GENV_POLICY`` names another, for
tests), honoured only if it and its folder belong to root and are not
writable by group or others: users cannot lift their own caps (the state
folder, which every user can write, can never hold policy). Every key is
optional::

    {"default": {"max_gpus": 2, "max_environments": 4},
     "users": {"alice": {"max_gpus": 4}},
     "exempt_users": ["prometheus"],
     "exempt_process_names": ["nvidia-cuda-mps-server", "/opt/dcgm/bin/dcgm"]}

- ``max_gpus``: GPUs a user holds at once over all their environments. A
  whole GPU counts 1, a share counts its fraction of the GPU's memory (8g
  of an 80g GPU: 0.1; a GPU of unknown size: 1).
- ``max_environments``: environments of a user that hold GPUs at once.
- A user's entry under ``users`` replaces the defaults it names.
- root is never capped. Exempt users and processes are never touched by
  ``genv enforce``: a program is exempt when the policy names its absolute
  path, or its file name and it is a system program (the file and every
  folder above it root's and writable by root only), so that a user's copy
  of ``nvidia-cuda-mps-server`` is not.

A file that is missing is no policy. One that is not trusted, not JSON, or
has an unknown key or a cap that is not a whole number from 0 up, gives one
line on stderr naming the file (and the field), and genv works as if there
were no policy.
"""

from __future__ import annotations

import os
import stat

from . import files, jsonio
from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, FrozenSet, List, Optional

DEFAULT_PATH = "/etc/genv/policy.json"
CAPS = ("max_gpus", "max_environments")
KEYS = ("default", "users", "exempt_users", "exempt_process_names")
MAX_BYTES = 1 << 20
UNIT = 1000000  # caps are counted in millionths of a GPU: exact, whole numbers


class Invalid(ValueError):
    pass


class Policy:
    """A policy that was read and checked; ``Policy()`` is no policy."""

    def __init__(self, data: Optional[Dict[str, Any]] = None, path: str = "") -> None:
        data = data or {}
        self.path = path
        self.default: Dict[str, int] = dict(data.get("default", {}))
        self.users: Dict[str, Dict[str, int]] = {name: dict(caps) for name, caps in data.get("users", {}).items()}
        self.exempt_users: FrozenSet[str] = frozenset(data.get("exempt_users", ()))
        self.exempt_process_names: FrozenSet[str] = frozenset(data.get("exempt_process_names", ()))
        self._paths: Optional[FrozenSet[str]] = None

    def cap(self, user: str, name: str) -> Optional[int]:
        """The cap ``name`` for ``user`` (None: no cap)."""
        own = self.users.get(user, {})
        return own[name] if name in own else self.default.get(name)

    def exempt(self, user: Optional[str], program: Optional[str], system: bool = False) -> bool:
        """Whether enforcement must leave this process alone: its user is
        exempt, or the program it runs (its executable's path, not the name
        it gives itself) is exempt: named by its absolute path, or by its
        file name when it is a ``system`` program (the file and every folder
        above it root's and writable by root only): a user's copy of an
        exempt program, under whatever name, is never exempt."""
        if user is not None and user in self.exempt_users:
            return True
        if not program:
            return False
        if program in self._exempt_paths():
            return True
        return system and os.path.basename(program) in self.exempt_process_names

    def _exempt_paths(self) -> FrozenSet[str]:
        """The exempt programs named by path, as /proc names a running
        program (links resolved: /bin/x is /usr/bin/x where /bin is a link)."""
        if self._paths is None:
            named = [name for name in self.exempt_process_names if name.startswith("/")]
            self._paths = frozenset(named + [os.path.realpath(name) for name in named])
        return self._paths


def path() -> str:
    """The policy file: /etc/genv/policy.json. ``GENV_POLICY`` names another
    (for tests) only where that one does not exist: on a machine with a
    policy, no user can switch it off by pointing elsewhere."""
    chosen = os.environ.get("GENV_POLICY")
    if not chosen or os.path.lexists(DEFAULT_PATH):
        return DEFAULT_PATH
    return chosen


def _cap(value: Any, where: str) -> int:
    if type(value) is not int or value < 0:
        raise Invalid("%s must be a whole number from 0 up" % where)
    return value


def _caps(value: Any, where: str) -> Dict[str, int]:
    if not isinstance(value, dict):
        raise Invalid("%s must be an object" % where)
    for key in value:
        if key not in CAPS:
            raise Invalid("unknown field %s.%s" % (where, key))
        _cap(value[key], "%s.%s" % (where, key))
    return value


def _names(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise Invalid("%s must be a list of names" % where)
    if where == "exempt_process_names":
        for item in value:
            if "/" in item and not (item.startswith("/") and not item.endswith("/")):
                raise Invalid("%s: %r is neither a program's name nor its absolute path" % (where, item))


def check(data: Any) -> Dict[str, Any]:
    """The checked policy data, or Invalid naming the field."""
    if not isinstance(data, dict):
        raise Invalid("it is not a JSON object")
    for key in data:
        if key not in KEYS:
            raise Invalid("unknown field %s" % key)
    if "default" in data:
        _caps(data["default"], "default")
    if "users" in data:
        if not isinstance(data["users"], dict):
            raise Invalid("users must be an object")
        for name, caps in data["users"].items():
            _caps(caps, "users.%s" % name)
    for key in ("exempt_users", "exempt_process_names"):
        if key in data:
            _names(data[key], key)
    return data


def _trusted(info: os.stat_result, what: str) -> None:
    if info.st_uid != 0:
        raise Invalid("the %s belongs to uid %d, not to root" % (what, info.st_uid))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Invalid("the %s is writable by others than root" % what)


def load(warn: Optional[Callable[[str], None]] = None) -> Policy:
    """The policy in force (see the module's docstring)."""
    where = path()
    if not os.path.isabs(where):
        return _ignored(where, "GENV_POLICY must be an absolute path", warn)
    folder, name = os.path.split(where)
    try:
        dir_fd = os.open(folder or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Policy()
    except OSError as error:
        return _ignored(where, error.strerror or str(error), warn)
    try:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return Policy()  # no policy: nothing to say
        _trusted(os.fstat(dir_fd), "folder")
        info, raw = files.read_regular(dir_fd, name, MAX_BYTES)
        _trusted(info, "file")
        try:
            data = jsonio.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, jsonio.JSONError) as error:
            raise Invalid("it is not valid JSON (%s)" % error) from None
        return Policy(check(data), where)
    except FileNotFoundError:
        return Policy()
    except Invalid as problem:
        return _ignored(where, str(problem), warn)
    except OSError as error:
        return _ignored(where, str(error.strerror or error), warn)
    finally:
        os.close(dir_fd)


def _ignored(where: str, why: str, warn: Optional[Callable[[str], None]]) -> Policy:
    if warn is None:
        from .report import warn as report

        warn = report
    warn("ignoring the policy %s: %s" % (where, why))
    return Policy()


class CapExceeded(GenvError):
    """An attach that would take a user past a cap."""


def check_caps(policy: Policy, users: Dict[int, Dict[str, Any]], uid: int, user: str, env: Dict[str, Any],
               chosen: Any, machine: Any) -> None:
    """Raise CapExceeded if ``env`` (of ``uid``) holding ``chosen`` would take
    its owner past a cap of the policy."""
    before = env["devices"]
    env["devices"] = chosen
    try:
        now = held(users, uid, machine)
    finally:
        env["devices"] = before
    for name in CAPS:
        cap = policy.cap(user, name)
        if cap is not None and now[name] > cap * UNIT:
            amount = now[name] / UNIT
            if name == "max_gpus":
                what = "GPU" if amount == 1 else "GPUs"
            else:
                what = "environment holding GPUs" if amount == 1 else "environments holding GPUs"
            raise CapExceeded("cannot attach: %s would hold %g %s, over the cap %s = %d for them in %s"
                              % (user, amount, what, name, cap, policy.path))


def least(request: Any, machine: Any) -> List[Dict[str, Any]]:
    """The least an attach for ``request`` can hold (a share counted on the
    largest GPU), to refuse at once what no free GPU would ever allow."""
    sizes = [device.get("total") for device in machine if device.get("total")]
    largest = max(sizes) if sizes else None
    indices = list(request.indices) if request.indices is not None else []
    count = len(indices) if indices else request.count
    return [{"index": indices[n] if indices else -1 - n, "memory": request.memory,
             "total": largest if request.memory is not None else None} for n in range(count)]


def held(users: Dict[int, Dict[str, Any]], uid: int, machine: Any) -> Dict[str, int]:
    """What a user holds, as the caps count it, in millionths (``UNIT``):
    ``max_gpus`` (a share counts its fraction of the GPU's memory) and
    ``max_environments`` (those holding GPUs)."""
    totals = {device["index"]: device.get("total") for device in machine}
    gpus = 0
    environments = 0
    for env in users.get(uid, {}).get("envs", ()):
        if env["devices"]:
            environments += 1
        for reserved in env["devices"]:
            share, total = reserved.get("memory"), reserved.get("total") or totals.get(reserved["index"])
            gpus += UNIT if share is None or not total else min(UNIT, share * UNIT // total)
    return {"max_gpus": gpus, "max_environments": environments * UNIT}
