"""The state folder: one JSON file per user, one lock, atomic replacement.

Layout of ``$GENV_TMPDIR`` (default ``/var/tmp/genv``), see docs/state.md:

- the folder itself, mode 1777 (sticky, like /tmp) so that every local user
  can use genv and nobody can remove or rename another user's files;
- ``user-<uid>.json``: the environments (and device cache) of one user,
  owned by that user, mode 0644, replaced only by that user (or root);
- ``.tmp-*``: a write in progress; a leftover one is from a killed writer.

The lock is ``flock`` on the folder itself: there is no lock file that
could be planted, linked or truncated. Every file is opened relative to the
locked folder with ``O_NOFOLLOW`` and must be a regular file owned by the
uid its name says (or root). A change is written to a temporary file in the
same folder, fsynced and renamed over the old file, so a process killed at
any instant leaves either the old or the new state.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time


from . import jsonio
from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

FORMAT = 2
"""The version of the user state files this genv writes."""

DEFAULT_DIR = "/var/tmp/genv"
_PREFIX = "user-"
_SUFFIX = ".json"
_TMP = ".tmp-"
_MAX_BYTES = 64 << 20


def warn(message: str) -> None:
    sys.stderr.write("genv: %s\n" % message)
    sys.stderr.flush()  # commands end with os._exit, which flushes nothing


def state_dir() -> str:
    return os.environ.get("GENV_TMPDIR") or DEFAULT_DIR


def empty_user(uid: int) -> Dict[str, Any]:
    return {"format": FORMAT, "uid": uid, "devices": None, "envs": []}


# --- shape checks -----------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _check_list(value: Any, what: str) -> List[Any]:
    _check(isinstance(value, list), "%s is not a list" % what)
    return value  # type: ignore[no-any-return]


# The parser yields exact types, so ``type(x) is int`` (which also excludes
# bool) is enough; checks are inline and messages built only on failure,
# since this runs over every environment of every user at every command.
_NUM = (int, float)


def validate(data: Any, uid: int) -> Dict[str, Any]:
    """Check a current-format user state; raise ValueError naming the problem."""
    if type(data) is not dict:
        raise ValueError("not an object")
    if type(data.get("uid")) is not int or data["uid"] != uid:
        raise ValueError("uid does not match the file name")
    devices = data.get("devices")
    if devices is not None:
        if type(devices) is not dict or type(devices.get("key")) is not str:
            raise ValueError("devices is invalid")
        if type(devices.get("checked")) not in _NUM or type(devices.get("list")) is not list:
            raise ValueError("devices is invalid")
        for device in devices["list"]:
            if (
                type(device) is not dict
                or type(device.get("index")) is not int
                or device["index"] < 0
                or type(device.get("uuid")) not in (str, type(None))
                or type(device.get("name")) not in (str, type(None))
            ):
                raise ValueError("a device is invalid")
    envs = data.get("envs")
    if type(envs) is not list:
        raise ValueError("envs is not a list")
    seen: Set[str] = set()
    for env in envs:
        if type(env) is not dict or type(env.get("id")) is not str or not env["id"]:
            raise ValueError("an environment id is invalid")
        if env["id"] in seen:
            raise ValueError("environment %r appears twice" % env["id"])
        seen.add(env["id"])
        config = env.get("config")
        if type(env.get("created")) not in _NUM or type(config) is not dict:
            raise ValueError("environment %r is invalid" % env["id"])
        gpus = config.get("gpus", 0)
        if type(gpus) is not int or gpus < 0 or type(config.get("name", "")) is not str:
            raise ValueError("environment %r has an invalid config" % env["id"])
        terminals, reserved, warnings = env.get("terminals"), env.get("devices"), env.get("warnings")
        if type(terminals) is not list or type(reserved) is not list or type(warnings) is not list:
            raise ValueError("environment %r is invalid" % env["id"])
        for terminal in terminals:
            if (
                type(terminal) is not dict
                or type(terminal.get("pid")) is not int
                or terminal["pid"] <= 0
                or type(terminal.get("token")) is not str
            ):
                raise ValueError("environment %r has an invalid terminal" % env["id"])
        for device in reserved:
            if (
                type(device) is not dict
                or type(device.get("index")) is not int
                or device["index"] < 0
                or type(device.get("uuid")) not in (str, type(None))
                or type(device.get("attached")) not in _NUM
            ):
                raise ValueError("environment %r has an invalid device" % env["id"])
        for warning in warnings:
            if type(warning) is not str:
                raise ValueError("environment %r has an invalid warning" % env["id"])
    return data  # type: ignore[no-any-return]


# --- format migrations --------------------------------------------------------


def _migrate_1(data: Any, uid: int) -> Dict[str, Any]:
    """Format 1 kept environments in an object keyed by id, terminals as bare
    PIDs and devices as bare indices. A bare PID is adopted only if a process
    with it runs now (the best that format allows); its token is recorded from
    then on."""
    from .procs import Processes

    _check(isinstance(data, dict) and isinstance(data.get("envs"), dict), "envs is not an object")
    processes = Processes()
    envs = []
    for eid, old in data["envs"].items():
        _check(isinstance(old, dict), "an environment is not an object")
        created = old.get("created")
        _check(_is_num(created), "an environment's creation time is invalid")
        terminals = []
        for pid in _check_list(old.get("pids"), "pids"):
            _check(_is_int(pid), "a pid is invalid")
            token = processes.token(pid)
            if token is not None:
                terminals.append({"pid": pid, "token": token})
        devices = []
        for index in _check_list(old.get("devices", []), "devices"):
            _check(_is_int(index) and index >= 0, "a device index is invalid")
            devices.append({"index": index, "uuid": None, "attached": created})
        config = old.get("config", {})
        _check(isinstance(config, dict), "config is not an object")
        envs.append(
            {
                "id": eid,
                "created": created,
                "config": config,
                "terminals": terminals,
                "devices": devices,
                "warnings": [],
            }
        )
    return {"format": 2, "uid": uid, "devices": None, "envs": envs}


_MIGRATIONS = {1: _migrate_1}


class NewerFormat(GenvError):
    pass


def upgrade(data: Any, uid: int, name: str) -> Dict[str, Any]:
    """Bring a parsed state file to the current format (or raise)."""
    _check(isinstance(data, dict), "not an object")
    version = data.get("format")
    _check(_is_int(version) and version >= 1, "no valid format version")
    if version > FORMAT:
        raise NewerFormat(
            "state was written by a newer genv: %s has format %d, this genv reads formats up to %d; "
            "upgrade genv" % (name, version, FORMAT)
        )
    while version < FORMAT:
        data = _MIGRATIONS[version](data, uid)
        version = data["format"]
    return validate(data, uid)


# --- the folder ---------------------------------------------------------------


def _fault(point: str) -> None:
    """Test hook: GENV_FAULT=<point> kills this process at that point."""
    if os.environ.get("GENV_FAULT") == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class StateDir:
    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or state_dir()
        self.euid = os.geteuid()
        self.peeked: Dict[int, Tuple[Tuple[int, ...], Dict[str, Any]]] = {}

    def file_name(self, uid: int) -> str:
        return "%s%d%s" % (_PREFIX, uid, _SUFFIX)

    def display(self, name: str) -> str:
        return os.path.join(self.path, name)

    # The folder is created sticky and world-writable, like /tmp: every user
    # can create their own file, nobody can replace or remove anybody else's.
    def ensure(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
                os.mkdir(self.path, 0o700)
                os.chmod(self.path, 0o1777, follow_symlinks=False)
            except FileExistsError:
                pass
            except OSError as error:
                raise GenvError("cannot create the state folder %s: %s" % (self.path, error.strerror)) from None
            info = os.lstat(self.path)
        if stat.S_ISLNK(info.st_mode):
            raise GenvError("refusing to use the state folder %s: it is a symbolic link" % self.path)
        if not stat.S_ISDIR(info.st_mode):
            raise GenvError("the state folder %s is not a folder" % self.path)
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise GenvError(
                "refusing to use the state folder %s: it is writable by everyone without the sticky bit "
                "(fix: chmod 1777 %s)" % (self.path, self.path)
            )

    def _open_dir(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise GenvError("refusing to use the state folder %s: it is a symbolic link" % self.path) from None
            raise GenvError("cannot open the state folder %s: %s" % (self.path, error.strerror)) from None

    def transaction(self) -> "Transaction":
        self.ensure()
        return Transaction(self)

    def peek(self, uid: int) -> Optional[Dict[str, Any]]:
        """Read one user's state without the lock (a consistent snapshot,
        thanks to atomic renames); None if missing or unusable."""
        try:
            dir_fd = self._open_dir()
        except GenvError:
            return None
        try:
            data = _read_user(dir_fd, self.file_name(uid), uid)
            if data is not None:
                identity = data.pop("_identity")
                if not data.pop("_migrated", False):
                    # The transaction that follows may reuse this parse.
                    self.peeked[uid] = (identity, data)
            return data
        except (OSError, ValueError, GenvError):
            return None
        finally:
            os.close(dir_fd)


def _read_user(
    dir_fd: int, name: str, uid: int, known: Optional[Tuple[Tuple[int, ...], Dict[str, Any]]] = None
) -> Optional[Dict[str, Any]]:
    """Open without following links; only a regular file owned by ``uid``
    counts. Raises OSError (incl. ELOOP), ValueError (damage) or GenvError.
    A file in an older format comes back upgraded, with ``_migrated`` set.
    ``known`` is an earlier read (identity, data): if the file is still that
    very file, its data is returned without reading and parsing it again."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Untrusted("it is not a regular file")
        if info.st_uid != uid:
            raise _Untrusted("it is owned by uid %d, not %d" % (info.st_uid, uid))
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if known is not None and known[0] == identity:
            return known[1]
        if info.st_size > _MAX_BYTES:
            raise ValueError("it is larger than %d bytes" % _MAX_BYTES)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    try:
        data = jsonio.loads(text)
    except jsonio.JSONError as error:
        raise ValueError("it is not valid JSON (%s)" % error) from None
    version = data.get("format") if isinstance(data, dict) else None
    data = upgrade(data, uid, name)
    if version != FORMAT:
        data["_migrated"] = True
    data["_identity"] = identity
    return data


class _Untrusted(ValueError):
    """A file that is not what genv writes (link, wrong owner, not regular)."""


class Transaction:
    """Everything under one exclusive lock: read all users, change, write.

    Use as a context manager; changes are written only when the block ends
    without an exception. Never run a subprocess inside the block.
    """

    def __init__(self, folder: StateDir) -> None:
        self.folder = folder
        self.users: Dict[int, Dict[str, Any]] = {}
        self._dirty: Set[int] = set()
        self._dir_fd = -1

    def __enter__(self) -> "Transaction":
        self._dir_fd = self.folder._open_dir()
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
            self._sweep_and_load()
        except BaseException:
            os.close(self._dir_fd)
            raise
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        try:
            if kind is None:
                for uid in sorted(self._dirty):
                    self._write(uid)
                if self._dirty:
                    _fault("before-unlock")
        finally:
            os.close(self._dir_fd)  # releases the lock

    # -- reading --

    def _sweep_and_load(self) -> None:
        euid = self.folder.euid
        for name in os.listdir(self._dir_fd):
            if name.startswith(_TMP):
                # Writers create temporary files only while holding the lock:
                # any we see now belongs to a writer that was killed.
                try:
                    os.unlink(name, dir_fd=self._dir_fd)
                except OSError:
                    pass
                continue
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            digits = name[len(_PREFIX) : -len(_SUFFIX)]
            if not digits.isdigit() or digits != str(int(digits)):
                continue
            uid = int(digits)
            try:
                data = _read_user(self._dir_fd, name, uid, self.folder.peeked.pop(uid, None))
            except _Untrusted as problem:
                self._untrusted(name, uid, str(problem))
                continue
            except OSError as error:
                if error.errno == errno.ELOOP:
                    self._untrusted(name, uid, "it is a symbolic link")
                    continue
                if error.errno == errno.EACCES:
                    raise GenvError("cannot read %s: permission denied" % self.folder.display(name)) from None
                raise
            except ValueError as problem:
                self._damaged(name, uid, str(problem))
                continue
            if data is not None:
                data.pop("_identity", None)
                if data.pop("_migrated", False) and euid in (0, uid):
                    self._dirty.add(uid)  # written back in the current format
                self.users[uid] = data
        if euid not in self.users:
            self.users[euid] = empty_user(euid)

    def _untrusted(self, name: str, uid: int, why: str) -> None:
        path = self.folder.display(name)
        if self.folder.euid in (0, uid):
            # Ours (or we are root): a link or foreign file in our place is
            # removed, never followed.
            try:
                os.unlink(name, dir_fd=self._dir_fd)
                warn("removed %s: %s" % (path, why))
                return
            except OSError:
                pass
        warn("ignoring %s: %s" % (path, why))

    def _damaged(self, name: str, uid: int, why: str) -> None:
        path = self.folder.display(name)
        if self.folder.euid in (0, uid):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = "%s.damaged-%s-%d" % (name, stamp, os.getpid())
            try:
                os.rename(name, aside, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                warn("state file %s was damaged (%s); moved it to %s" % (path, why, self.folder.display(aside)))
                return
            except OSError:
                pass
        warn("ignoring damaged state file %s (%s); its owner's next genv command moves it aside" % (path, why))

    # -- changing --

    def user(self, uid: int) -> Dict[str, Any]:
        if uid not in self.users:
            self.users[uid] = empty_user(uid)
        return self.users[uid]

    def changed(self, uid: int) -> None:
        euid = self.folder.euid
        if euid not in (0, uid):
            raise GenvError("cannot change the state of uid %d" % uid)
        self._dirty.add(uid)

    def _write(self, uid: int) -> None:
        data = self.users[uid]
        payload = jsonio.dumps(data).encode("ascii") + b"\n"
        name = self.folder.file_name(uid)
        tmp = "%s%d-%d-%s" % (_TMP, uid, os.getpid(), os.urandom(4).hex())
        dir_fd = self._dir_fd
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dir_fd,
            )
        except OSError as error:
            raise GenvError("cannot write to the state folder %s: %s" % (self.folder.path, error.strerror)) from None
        try:
            try:
                os.fchmod(fd, 0o644)  # whatever the umask: others must read it
                if uid != self.folder.euid:
                    os.fchown(fd, uid, -1)  # root writing a user's file
                _fault("before-write")
                half = len(payload) // 2
                os.write(fd, payload[:half])
                _fault("mid-write")
                view = memoryview(payload)[half:]
                while view:
                    view = view[os.write(fd, view) :]
                _fault("before-fsync")
                os.fsync(fd)
            finally:
                os.close(fd)
            _fault("before-rename")
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as error:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            if error.errno in (errno.EPERM, errno.EACCES):
                raise GenvError(
                    "cannot replace %s: it belongs to another user; ask an administrator to remove it"
                    % self.folder.display(name)
                ) from None
            raise GenvError("cannot write %s: %s" % (self.folder.display(name), error.strerror)) from None
        _fault("after-rename")
        os.fsync(dir_fd)

    def all_envs(self) -> Iterator[Any]:
        for uid in sorted(self.users):
            for env in self.users[uid]["envs"]:
                yield uid, env
