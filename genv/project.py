"""Configuration as code: the ``.genv`` folder and its ``config.json``.

The folder that applies is the nearest ``.genv`` from the current directory
upward, else ``$HOME/.genv``. ``config.json`` holds the saved configuration
(format 1): ``{"format": 1, "gpus": 2, "name": "train"}`` with either field
optional. It is written like the state: temporary file, fsync, rename.
"""

from __future__ import annotations

import os


from . import jsonio
from .devices import MAX_GPUS
from .envs import MAX_TEXT
from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Optional


CONFIG = "config.json"
FORMAT = 1
FIELDS = ("gpus", "name")


def find_home(start: Optional[str] = None) -> Optional[str]:
    try:
        here = os.path.abspath(start or os.getcwd())
    except FileNotFoundError:
        here = None
    while here:
        candidate = os.path.join(here, ".genv")
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    home = os.environ.get("HOME")
    if home:
        candidate = os.path.join(home, ".genv")
        if os.path.isdir(candidate):
            return candidate
    return None


def require_home() -> str:
    home = find_home()
    if home is None:
        raise GenvError("no .genv folder here, above, or in your home folder; create one with: mkdir .genv")
    return home


def check_config(data: Any, where: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise GenvError("%s is not a JSON object" % where)
    version = data.get("format")
    if version != FORMAT:
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
            raise GenvError("%s was written by a newer genv (format %d)" % (where, version))
        raise GenvError("%s has no valid format version" % where)
    config: Dict[str, Any] = {}
    if "gpus" in data:
        gpus = data["gpus"]
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not 0 <= gpus <= MAX_GPUS:
            raise GenvError("%s: invalid gpus %r" % (where, gpus))
        config["gpus"] = gpus
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TEXT:
            raise GenvError("%s: invalid name" % where)
        config["name"] = name
    unknown = sorted(set(data) - set(FIELDS) - {"format"})
    if unknown:
        raise GenvError("%s: unknown field %r" % (where, unknown[0]))
    return config


def load(home: str) -> Optional[Dict[str, Any]]:
    """The saved configuration, None if nothing was saved."""
    path = os.path.join(home, CONFIG)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise GenvError("cannot read %s: %s" % (path, error.strerror)) from None
    try:
        data = jsonio.loads(raw.decode("utf-8", "surrogateescape"))
    except jsonio.JSONError as error:
        raise GenvError("%s is not valid JSON: %s" % (path, error)) from None
    return check_config(data, path)


def save(home: str, config: Dict[str, Any]) -> str:
    path = os.path.join(home, CONFIG)
    data: Dict[str, Any] = {"format": FORMAT}
    for field in FIELDS:
        if field in config:
            data[field] = config[field]
    payload = jsonio.dumps(data).encode("ascii") + b"\n"
    tmp = os.path.join(home, ".%s.tmp-%d" % (CONFIG, os.getpid()))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise GenvError("cannot save to %s: %s" % (path, error.strerror)) from None
    return path
