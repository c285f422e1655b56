"""Configuration as code: the ``.genv`` folder and its ``config.json``.

The folder that applies is the nearest *trusted* ``.genv`` from the current
directory upward, else ``$HOME/.genv``. Like git's ``safe.directory``, a
``.genv`` is trusted only if it and its ``config.json`` belong to the user
(or root) and are not writable by group or others: a folder that another
user made (say in a world-writable ``/tmp/x``) is skipped with one warning
naming it. ``config.json`` is read without blocking (a FIFO there cannot hang
a command) and only up to 64 KiB; it is written like the state (temporary
file, fsync, rename, folder fsync), and only into a folder genv would read.

``config.json`` (format 1): ``{"format": 1, "gpus": 2, "name": "train",
"gpu_memory": "8g"}``, every field optional.
"""

from __future__ import annotations

import errno
import os
import stat

from . import files, jsonio
from .errors import GenvError
from .limits import MAX_GPUS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional


CONFIG = "config.json"
FORMAT = 1
FIELDS = ("gpus", "name", "gpu_memory")
MAX_BYTES = 64 << 10


class Untrusted(GenvError):
    pass


def _check_owner(info: os.stat_result, what: str, path: str, euid: int) -> None:
    if info.st_uid not in (euid, 0):
        raise Untrusted("ignoring %s: the %s belongs to uid %d, not to you" % (path, what, info.st_uid))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted("ignoring %s: the %s is writable by others" % (path, what))


def open_home(path: str) -> int:
    """A descriptor on a trusted ``.genv`` folder (its config checked too),
    or Untrusted (its message names the folder and why)."""
    euid = os.geteuid()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise Untrusted("ignoring %s: %s" % (path, error.strerror)) from None
    try:
        _check_owner(os.fstat(fd), "folder", path, euid)
        try:
            info = os.stat(CONFIG, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return fd
        if not stat.S_ISREG(info.st_mode):
            raise Untrusted("ignoring %s: its %s is not a regular file" % (path, CONFIG))
        _check_owner(info, CONFIG, path, euid)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _candidates(start: Optional[str]) -> List[str]:
    found = []
    try:
        here: Optional[str] = os.path.abspath(start or os.getcwd())
    except FileNotFoundError:
        here = None
    while here:
        found.append(os.path.join(here, ".genv"))
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        candidate = os.path.join(home, ".genv")
        if candidate not in found:
            found.append(candidate)
    return found


def find_home(start: Optional[str] = None, warn: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """The trusted ``.genv`` folder that applies here; folders skipped on
    the way are reported through ``warn`` (one line each)."""
    if warn is None:
        from .report import warn as report

        warn = report
    for candidate in _candidates(start):
        if not os.path.isdir(candidate):
            continue
        try:
            os.close(open_home(candidate))
        except Untrusted as problem:
            warn(str(problem))
            continue
        return candidate
    return None


def require_home() -> str:
    home = find_home()
    if home is None:
        raise GenvError("no .genv folder of yours here, above, or in your home folder; create one with: mkdir .genv")
    return home


def check_config(data: Any, where: str) -> Dict[str, Any]:
    """The configuration in a parsed config.json, or GenvError naming the problem."""
    from .environments import check_text

    if not isinstance(data, dict):
        raise GenvError("%s is not a JSON object" % where)
    version = data.get("format")
    if version != FORMAT:
        if type(version) is int and version > FORMAT:
            raise GenvError("%s was written by a newer genv (format %d)" % (where, version))
        raise GenvError("%s has no valid format version" % where)
    unknown = sorted(set(data) - set(FIELDS) - {"format"})
    if unknown:
        raise GenvError("%s: unknown field %r" % (where, unknown[0]))
    config: Dict[str, Any] = {}
    if "gpus" in data:
        gpus = data["gpus"]
        if type(gpus) is not int or not 0 <= gpus <= MAX_GPUS:
            raise GenvError("%s: invalid gpus %r" % (where, gpus))
        config["gpus"] = gpus
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str):
            raise GenvError("%s: invalid name" % where)
        try:
            config["name"] = check_text(name, "name")
        except GenvError as error:
            raise GenvError("%s: %s" % (where, error)) from None
    if "gpu_memory" in data:
        from .sizes import parse_size

        memory = data["gpu_memory"]
        if not isinstance(memory, str):
            raise GenvError("%s: invalid gpu_memory %r (write it as a size, e.g. \"8g\")" % (where, memory))
        try:
            config["gpu_memory"] = parse_size(memory, "gpu_memory")
        except GenvError as error:
            raise GenvError("%s: %s" % (where, error)) from None
    return config


def saved() -> Dict[str, Any]:
    """The configuration saved in the project that applies here ({}: none)."""
    home = find_home()
    return (load(home) or {}) if home is not None else {}


def load(home: str) -> Optional[Dict[str, Any]]:
    """The saved configuration, None if nothing was saved."""
    path = os.path.join(home, CONFIG)
    fd = open_home(home)
    try:
        _, raw = files.read_regular(fd, CONFIG, MAX_BYTES)
    except FileNotFoundError:
        return None
    except files.TooLarge:
        raise GenvError("cannot read %s: larger than %d bytes" % (path, MAX_BYTES)) from None
    except files.NotRegular:
        raise GenvError("cannot read %s: not a regular file" % path) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise GenvError("cannot read %s: it is a symbolic link" % path) from None
        raise GenvError("cannot read %s: %s" % (path, error.strerror)) from None
    finally:
        os.close(fd)
    try:
        data = jsonio.loads(raw.decode("utf-8", "surrogateescape"))
    except jsonio.JSONError as error:
        raise GenvError("%s is not valid JSON: %s" % (path, error)) from None
    return check_config(data, path)


def serialise(config: Dict[str, Any]) -> bytes:
    from .sizes import format_size

    data: Dict[str, Any] = {"format": FORMAT}
    for field in FIELDS:
        if field in config:
            data[field] = format_size(config[field]) if field == "gpu_memory" else config[field]
    return jsonio.dumps(data).encode("ascii") + b"\n"


def save(home: str, config: Dict[str, Any]) -> str:
    """Write the configuration into a trusted ``.genv`` folder."""
    path = os.path.join(home, CONFIG)
    payload = serialise(config)
    fd = open_home(home)
    try:
        files.write_atomic(fd, CONFIG, payload, files.temp_name(".%s.tmp-" % CONFIG))
    except OSError as error:
        raise GenvError("cannot save to %s: %s" % (path, error.strerror)) from None
    finally:
        os.close(fd)
    return path
