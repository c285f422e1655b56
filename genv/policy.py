"""The admin's policy: caps per user and who enforcement leaves alone.

A JSON file at ``/etc/genv/policy.json`` (``GENV_POLICY`` names another, for
tests), honoured only if it and its folder belong to root and are not
writable by group or others: users cannot lift their own caps (the state
folder, which every user can write, can never hold policy). Every key is
optional::

    {"default": {"max_gpus": 2, "max_environments": 4, "max_gpu_memory": "80g"},
     "users": {"alice": {"max_gpus": 4}},
     "exempt_users": ["prometheus"],
     "exempt_process_names": ["nvidia-cuda-mps-server", "/opt/dcgm/bin/dcgm"]}

- ``max_gpus``: GPUs a user holds any part of at once, over all their
  environments: a GPU counts 1 whether held whole or shared (a share keeps
  the whole GPU from those who need one whole).
- ``max_gpu_memory``: GPU memory a user holds at once, over all their
  environments (a size as ``genv config gpu-memory`` takes it, e.g.
  ``"16g"``, or a number of bytes): a share counts its size, a whole GPU
  all its memory.
- ``max_environments``: environments of a user that hold GPUs at once.
- ``max_idle``: how long an environment may hold GPUs without one of its
  processes on them before ``genv enforce`` reports it (rule ``idle``) and,
  with ``--reclaim``, detaches it (a duration: ``"90m"``, ``"2h"``,
  ``"1d"``, or a number of seconds).
- ``max_reservation``: the longest ``attach --for`` (an end is never later
  than now + this), and the end of every attach that gives none (a
  duration). Renewing (``attach --for`` again) is how a present user keeps
  GPUs.
- A user's entry under ``users`` replaces the defaults it names.
- root is never capped (nor reclaimed, nor given an end). Exempt users and processes are never touched by
  ``genv enforce``: a program is exempt when the policy names its absolute
  path, or its file name and it is a system program (the file and every
  folder above it root's and writable by root only), so that a user's copy
  of ``nvidia-cuda-mps-server`` is not.

A file that is missing is no policy. One that is not trusted or not a JSON
object gives one line on stderr naming the file, and genv works as if there
were no policy. Within a good file, a key that is unknown or has a bad value
is left out, with one line naming it: the other keys still apply (a typo
must not lift every cap).
"""

from __future__ import annotations

import os
import stat

from . import files, jsonio
from .errors import GenvError
from .limits import MAX_SECONDS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

DEFAULT_PATH = "/etc/genv/policy.json"
CAPS = ("max_gpus", "max_environments", "max_gpu_memory")
DURATIONS = ("max_idle", "max_reservation")
KEYS = ("default", "users", "exempt_users", "exempt_process_names")
MAX_BYTES = 1 << 20


class Invalid(ValueError):
    pass


class Policy:
    """A policy that was read and checked (``check``: every value parsed);
    ``Policy()`` is no policy."""

    def __init__(self, data: Optional[Dict[str, Any]] = None, path: str = "") -> None:
        data = data or {}
        self.path = path
        self.default: Dict[str, Any] = dict(data.get("default", {}))
        self.users: Dict[str, Dict[str, Any]] = {name: dict(caps) for name, caps in data.get("users", {}).items()}
        self.exempt_users: FrozenSet[str] = frozenset(data.get("exempt_users", ()))
        self.exempt_process_names: FrozenSet[str] = frozenset(data.get("exempt_process_names", ()))
        self._paths: Optional[FrozenSet[str]] = None

    def cap(self, user: str, name: str) -> Any:
        """The setting ``name`` for ``user`` (None: none), parsed: a whole
        number (GPUs, environments, bytes) or seconds."""
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


# --- checking the values: each bad one is left out, and said once -----------------


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise Invalid("it must be a whole number from 0 up")
    return value


def _memory(value: Any) -> int:
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str):
        from .sizes import parse_size

        try:
            return parse_size(value, "size")
        except GenvError as error:
            raise Invalid(str(error)) from None
    raise Invalid("it must be a size such as \"16g\" or a whole number of bytes from 0 up")


def _duration(value: Any) -> float:
    if isinstance(value, str):
        from .sizes import parse_duration

        return parse_duration(value, "duration", error=Invalid)
    if type(value) in (int, float) and 0 < value <= MAX_SECONDS:
        return float(value)
    raise Invalid("it must be a duration such as \"90m\", \"2h\", \"1d\" or a number of seconds above 0")


PARSERS: Dict[str, Callable[[Any], Any]] = {"max_gpus": _count, "max_environments": _count,
                                          "max_gpu_memory": _memory, "max_idle": _duration,
                                          "max_reservation": _duration}


def _caps(value: Any, where: str, problems: List[str]) -> Optional[Dict[str, Any]]:
    """A user's (or the default) settings, parsed; None if not an object."""
    if not isinstance(value, dict):
        problems.append("%s: it must be an object" % where)
        return None
    parsed = {}
    for key, item in value.items():
        if key not in PARSERS:
            problems.append("%s.%s: unknown field" % (where, key))
            continue
        try:
            parsed[key] = PARSERS[key](item)
        except Invalid as why:
            problems.append("%s.%s: %s" % (where, key, why))
    return parsed


def _names(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise Invalid("it must be a list of names")
    if where == "exempt_process_names":
        for item in value:
            if "/" in item and not (item.startswith("/") and not item.endswith("/")):
                raise Invalid("%r is neither a program's name nor its absolute path" % item)


def check(data: Any) -> Tuple[Dict[str, Any], List[str]]:
    """The usable policy (every value parsed) and what was left out, one
    ``field: why`` each; Invalid if it is not an object at all."""
    if not isinstance(data, dict):
        raise Invalid("it is not a JSON object")
    problems: List[str] = []
    kept: Dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            problems.append("%s: unknown field" % key)
        elif key == "default":
            caps = _caps(value, "default", problems)
            if caps is not None:
                kept["default"] = caps
        elif key == "users":
            if not isinstance(value, dict):
                problems.append("users: it must be an object")
                continue
            users = {}
            for name, caps in value.items():
                parsed = _caps(caps, "users.%s" % name, problems)
                if parsed is not None:
                    users[name] = parsed
            kept["users"] = users
        else:
            try:
                _names(value, key)
                kept[key] = value
            except Invalid as why:
                problems.append("%s: %s" % (key, why))
    return kept, problems


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
        kept, problems = check(data)
        for problem in problems:
            field, _, why = problem.partition(": ")
            _say("ignoring %s in the policy %s: %s" % (field, where, why), warn)
        return Policy(kept, where)
    except FileNotFoundError:
        return Policy()
    except Invalid as problem:
        return _ignored(where, str(problem), warn)
    except OSError as error:
        return _ignored(where, str(error.strerror or error), warn)
    finally:
        os.close(dir_fd)


def _say(line: str, warn: Optional[Callable[[str], None]]) -> None:
    if warn is None:
        from .report import warn as report

        warn = report
    warn(line)


def _ignored(where: str, why: str, warn: Optional[Callable[[str], None]]) -> Policy:
    _say("ignoring the policy %s: %s" % (where, why), warn)
    return Policy()


class CapExceeded(GenvError):
    """An attach that would take a user past a cap."""


def check_caps(policy: Policy, users: Dict[int, Dict[str, Any]], uid: int, user: str, env: Dict[str, Any],
               chosen: Any, machine: Any) -> None:
    """Raise CapExceeded if ``env`` (of ``uid``) holding ``chosen`` would take
    its owner past a cap of the policy."""
    from .sizes import format_size

    before = env["devices"]
    env["devices"] = chosen
    try:
        now = held(users, uid, machine)
    finally:
        env["devices"] = before
    for name in CAPS:
        cap = policy.cap(user, name)
        if cap is None:
            continue
        amount = now[name]
        if name == "max_gpu_memory":
            if amount is None:
                raise CapExceeded("cannot attach: %s would hold a GPU whose memory nvidia-smi does not say, so "
                                  "the cap max_gpu_memory = %s for them in %s cannot be kept"
                                  % (user, format_size(cap) if cap else "0", policy.path))
            if amount > cap:
                raise CapExceeded("cannot attach: %s would hold %s of GPU memory, over the cap max_gpu_memory = "
                                  "%s for them in %s" % (user, _size(amount), _size(cap), policy.path))
        elif amount > cap:
            if name == "max_gpus":
                what = "GPU" if amount == 1 else "GPUs"
            else:
                what = "environment holding GPUs" if amount == 1 else "environments holding GPUs"
            raise CapExceeded("cannot attach: %s would hold %d %s, over the cap %s = %d for them in %s"
                              % (user, amount, what, name, cap, policy.path))


def _size(value: int) -> str:
    """A memory amount in the largest unit that keeps it whole (``0`` for none)."""
    from .sizes import format_size

    return format_size(value) if value else "0"


def least(request: Any, machine: Any, users: Dict[int, Dict[str, Any]], uid: int,
          env: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The least an attach for ``request`` can hold, to refuse at once what
    no outcome would ever allow: its very GPUs, or, by count, shares on the
    GPUs the user holds in other environments first (they count once), then
    other GPUs, a whole GPU the smallest the machine has."""
    totals = {device["index"]: device.get("total") for device in machine}
    if request.indices is not None:
        return [{"index": index, "uuid": None, "memory": request.memory, "total": totals.get(index)}
                for index in request.indices]
    elsewhere: List[int] = []
    if request.memory is not None:
        for other in users.get(uid, {}).get("envs", ()):
            if other is not env:
                elsewhere += [d["index"] for d in other["devices"] if d["index"] not in elsewhere]
    sizes = sorted(total for total in totals.values() if total)
    chosen = []
    for n in range(request.count):
        if n < len(elsewhere):
            index, total = elsewhere[n], totals.get(elsewhere[n])
        else:
            index, total = -1 - n, sizes[min(n, len(sizes) - 1)] if sizes else None
        chosen.append({"index": index, "uuid": None, "memory": request.memory, "total": total})
    return chosen


def held(users: Dict[int, Dict[str, Any]], uid: int, machine: Any) -> Dict[str, Any]:
    """What a user holds, as the caps count it: ``max_gpus`` (each GPU held
    any part of, once), ``max_environments`` (those holding GPUs) and
    ``max_gpu_memory`` (bytes: the shares, and all of each GPU held whole;
    None when a GPU held whole has no known size)."""
    totals = {device["index"]: device.get("total") for device in machine}
    gpus = set()
    environments = 0
    memory: Optional[int] = 0
    for env in users.get(uid, {}).get("envs", ()):
        if env["devices"]:
            environments += 1
        for reserved in env["devices"]:
            gpus.add(reserved["index"])
            share = reserved.get("memory")
            if share is None:
                # The machine's size wins: a "total" on a GPU held whole is only
                # ever written by hand (genv writes it on shares and on
                # made-up reservations, which the machine has not).
                share = totals.get(reserved["index"]) or reserved.get("total")
            memory = None if memory is None or share is None else memory + share
    return {"max_gpus": len(gpus), "max_environments": environments, "max_gpu_memory": memory}
