"""The state folder: one JSON file per user, one lock, atomic replacement.

Layout of ``$GENV_TMPDIR`` (default ``/var/tmp/genv``), see docs/state.md:

- the folder itself, mode 1777 (sticky, like /tmp) so that every local user
  can use genv and nobody can remove or rename another user's files;
- ``user-<uid>.json``: the environments (and device cache) of one user,
  owned by that user, mode 0644, replaced only by that user (or root);
- ``.tmp-<uid>-<pid>-<8 hex digits>``: a write in progress; a leftover one
  is from a killed writer.

The lock is ``flock`` on the folder itself: there is no lock file that
could be planted, linked or truncated. Every file is opened relative to the
locked folder with ``O_NOFOLLOW`` and must be a regular file owned by the
uid its name says. genv touches only names that are exactly its own, and a
file under such a name that genv did not write is left alone.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from . import files, jsonio, locking
from .errors import GenvError
from .limits import MAX_GPUS, MAX_PID, MAX_TEXT, MAX_TIME
from .text import encodable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, Iterator, Optional, Set, Tuple

    Identity = Tuple[int, ...]

FORMAT = 3
"""The version of the user state files this genv writes."""

DEFAULT_DIR = "/var/tmp/genv"
_PREFIX = "user-"
_SUFFIX = ".json"
_TMP = ".tmp-"
_MAX_BYTES = 64 << 20


def _signed(raw: bytes) -> bool:
    """Whether the content starts as genv's state does (``{"format"``,
    whitespace allowed): a file under genv's name that does not is somebody
    else's, and is never moved aside or replaced."""
    head = raw[:256].lstrip()
    return head[:1] == b"{" and head[1:].lstrip().startswith(b'"format"')



def warn(message: str) -> None:
    from .cli import err

    err(message)


def state_dir() -> str:
    """``GENV_TMPDIR`` (or, in a Slurm job, the job's own folder; or the
    default), normalised: absolute, no ``..``, no trailing slash, so that
    checks apply to what the path names."""
    raw = os.environ.get("GENV_TMPDIR")
    if not raw and os.environ.get("SLURM_JOB_ID") and os.environ.get("GENV_SLURM") != "0":
        from .slurm.facts import job_state_dir  # Slurm: a job's environments live in a folder of its own

        raw = job_state_dir()
    return normalise_dir(raw or DEFAULT_DIR, "GENV_TMPDIR")


def normalise_dir(raw: str, what: str) -> str:
    if not raw.startswith("/"):
        raise GenvError("invalid %s %r: it must be an absolute path" % (what, raw))
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise GenvError("invalid %s %r: it must not contain '..'" % (what, raw))
    if not parts:
        raise GenvError("invalid %s %r: not the root folder" % (what, raw))
    return "/" + "/".join(parts)


def empty_user(uid: int) -> Dict[str, Any]:
    return {"format": FORMAT, "uid": uid, "devices": None, "envs": []}


# --- shape checks -------------------------------------------------------------
# The parser yields exact types, so ``type(x) is int`` (which also excludes
# bool) is enough. Every number is checked for its range (a float from JSON
# may be ``1e999``, an infinity). This runs over every environment of every
# user at every command: checks are inline, messages built only on failure.

_NUM = (int, float)
MAX_BYTES_GPU = 1 << 60


def _time_ok(value: Any) -> bool:
    return type(value) in _NUM and 0 <= value < MAX_TIME


def _text_ok(value: Any, limit: int = MAX_TEXT) -> bool:
    return type(value) is str and 0 < len(value) <= limit and encodable(value)


def _bytes_ok(value: Any, optional: bool) -> bool:
    if value is None:
        return optional
    return type(value) is int and 0 < value <= MAX_BYTES_GPU


def _device_ok(device: Any, stamp: str) -> bool:
    """A GPU as listed (stamp ``""``) or as reserved (stamp ``"attached"``)."""
    return (
        type(device) is dict
        and type(device.get("index")) is int
        and 0 <= device["index"] < MAX_GPUS
        and (device.get("uuid") is None or _text_ok(device["uuid"]))
        and (not stamp or _time_ok(device.get(stamp)))
    )


def _waiting_ok(waiting: Any) -> bool:
    """An environment's place in the line of ``attach --wait``."""
    indices = waiting.get("indices") if type(waiting) is dict else None
    return (
        type(waiting) is dict
        and type(waiting.get("pid")) is int
        and 0 < waiting["pid"] <= MAX_PID
        and _text_ok(waiting.get("token"), 128)
        and _time_ok(waiting.get("since"))
        and (waiting.get("arrived") is None or _time_ok(waiting["arrived"]))
        and type(waiting.get("count")) is int
        and 0 <= waiting["count"] <= MAX_GPUS
        and _bytes_ok(waiting.get("memory"), True)
        and type(waiting.get("over_subscribe")) is bool
        and (indices is None or (type(indices) is list and len(indices) <= MAX_GPUS
                                 and all(type(i) is int and 0 <= i < MAX_GPUS for i in indices)))
    )


def validate(data: Any, uid: int) -> Dict[str, Any]:
    """Check a current-format user state; raise ValueError naming the problem."""
    if type(data) is not dict:
        raise ValueError("not an object")
    if type(data.get("uid")) is not int or data["uid"] != uid:
        raise ValueError("uid does not match the file name")
    devices = data.get("devices")
    if devices is not None:
        if type(devices) is not dict or not _text_ok(devices.get("key"), 4096):
            raise ValueError("devices is invalid")
        if not _time_ok(devices.get("checked")) or type(devices.get("list")) is not list:
            raise ValueError("devices is invalid")
        for device in devices["list"]:
            if (
                not _device_ok(device, "")
                or (device.get("name") is not None and not _text_ok(device["name"]))
                or not _bytes_ok(device.get("total"), True)
            ):
                raise ValueError("a device is invalid")
    envs = data.get("envs")
    if type(envs) is not list:
        raise ValueError("envs is not a list")
    joins = data.get("joins", [])
    if type(joins) is not list or (joins and uid != 0):
        raise ValueError("joins is invalid")
    for join in joins:
        if (
            type(join) is not dict
            or type(join.get("uid")) is not int
            or not _text_ok(join.get("env"))
            or type(join.get("pid")) is not int
            or not 0 < join["pid"] <= MAX_PID
            or not _text_ok(join.get("token"), 128)
        ):
            raise ValueError("a join is invalid")
    seen: Set[str] = set()
    for env in envs:
        if type(env) is not dict or not _text_ok(env.get("id")):
            raise ValueError("an environment id is invalid")
        if env["id"] in seen:
            raise ValueError("environment %r appears twice" % env["id"])
        seen.add(env["id"])
        config = env.get("config")
        if not _time_ok(env.get("created")) or type(config) is not dict:
            raise ValueError("environment %r is invalid" % env["id"])
        gpus = config.get("gpus", 0)
        if (
            type(gpus) is not int
            or not 0 <= gpus <= MAX_GPUS
            or ("name" in config and not _text_ok(config["name"]))
            or not _bytes_ok(config.get("gpu_memory"), True)
        ):
            raise ValueError("environment %r has an invalid config" % env["id"])
        waiting = env.get("waiting")
        if waiting is not None and not _waiting_ok(waiting):
            raise ValueError("environment %r has an invalid place in line" % env["id"])
        terminals, reserved, warnings = env.get("terminals"), env.get("devices"), env.get("warnings")
        if type(terminals) is not list or type(reserved) is not list or type(warnings) is not list:
            raise ValueError("environment %r is invalid" % env["id"])
        for terminal in terminals:
            if (
                type(terminal) is not dict
                or type(terminal.get("pid")) is not int
                or not 0 < terminal["pid"] <= MAX_PID
                or not _text_ok(terminal.get("token"), 128)
            ):
                raise ValueError("environment %r has an invalid terminal" % env["id"])
        for device in reserved:
            if (
                not _device_ok(device, "attached")
                or not _bytes_ok(device.get("memory"), True)
                or not _bytes_ok(device.get("total"), True)
            ):
                raise ValueError("environment %r has an invalid device" % env["id"])
        for warning in warnings:
            if not _text_ok(warning, 4096):
                raise ValueError("environment %r has an invalid warning" % env["id"])
    return data


# --- format migrations ----------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _migrate_1(data: Any, uid: int) -> Dict[str, Any]:
    """Format 1 kept environments in an object keyed by id, terminals as bare
    PIDs and devices as bare indices. A bare PID is adopted only if a process
    with it runs now (the best that format allows); its token is recorded from
    then on. The result is checked by ``validate`` like any other state."""
    from .procs import processes

    _check(isinstance(data, dict) and isinstance(data.get("envs"), dict), "envs is not an object")
    facts = processes()
    envs = []
    for eid, old in data["envs"].items():
        _check(isinstance(old, dict), "an environment is not an object")
        created = old.get("created")
        _check(_time_ok(created), "an environment's creation time is invalid")
        terminals = []
        pids = old.get("pids")
        _check(isinstance(pids, list), "pids is not a list")
        for pid in pids:
            _check(type(pid) is int and 0 < pid <= MAX_PID, "a pid is invalid")
            token = facts.token(pid)
            if token is not None:
                terminals.append({"pid": pid, "token": token})
        indices = old.get("devices", [])
        _check(isinstance(indices, list), "devices is not a list")
        devices = [{"index": index, "uuid": None, "attached": created} for index in indices]
        config = old.get("config", {})
        _check(isinstance(config, dict), "config is not an object")
        envs.append({"id": eid, "created": created, "config": config, "terminals": terminals,
                     "devices": devices, "warnings": []})
    return {"format": 2, "uid": uid, "devices": None, "envs": envs}


def _migrate_2(data: Any, uid: int) -> Dict[str, Any]:
    """Format 3 added memory shares (``gpu_memory`` in a configuration,
    ``memory`` in a reservation), GPU sizes in the device list, and places
    in the line of ``attach --wait``; a format 2 file has none of them, so
    it is format 3 as it is. (The version changed so that a genv that knows
    nothing of shares refuses these files instead of misreading them.)"""
    _check(isinstance(data, dict), "not an object")
    return {**data, "format": 3}


_MIGRATIONS = {1: _migrate_1, 2: _migrate_2}


class NewerFormat(GenvError):
    pass


def upgrade(data: Any, uid: int, name: str) -> Dict[str, Any]:
    """Bring a parsed state file to the current format (or raise)."""
    _check(isinstance(data, dict), "not an object")
    version = data.get("format")
    _check(type(version) is int and version >= 1, "no valid format version")
    if version > FORMAT:
        raise NewerFormat(
            "state was written by a newer genv: %s has format %d, this genv reads formats up to %d; "
            "upgrade genv" % (name, version, FORMAT)
        )
    while version < FORMAT:
        data = _MIGRATIONS[version](data, uid)
        version = data["format"]
    return validate(data, uid)


# --- reading one file -------------------------------------------------------------


class Found:
    """What ``read_user`` found: the file's identity, its state (in the
    current format) and whether it was upgraded from an older format."""

    __slots__ = ("identity", "data", "migrated")

    def __init__(self, identity: Identity, data: Dict[str, Any], migrated: bool) -> None:
        self.identity, self.data, self.migrated = identity, data, migrated


class Untrusted(ValueError):
    """Not a file genv wrote: a link, a FIFO, another owner."""


class Foreign(ValueError):
    """A regular file under genv's name whose content genv did not write."""


def read_user(dir_fd: int, name: str, uid: int, known: Optional[Found] = None) -> Optional[Found]:
    """Read one user's file; None if there is none. Raises Untrusted,
    Foreign, ValueError (damage), NewerFormat or OSError. ``known`` is an
    earlier read: if the file is still that very file, it is returned as is."""
    try:
        info, raw = files.read_regular(dir_fd, name, _MAX_BYTES)
    except FileNotFoundError:
        return None
    except files.NotRegular:
        raise Untrusted("it is not a regular file") from None
    except files.TooLarge:
        raise ValueError("it is larger than %d bytes" % _MAX_BYTES) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Untrusted("it is a symbolic link") from None
        raise
    if info.st_uid != uid:
        raise Untrusted("it is owned by uid %d, not %d" % (info.st_uid, uid))
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if known is not None and known.identity == identity:
        return known
    if not _signed(raw):
        raise Foreign("it is not a genv state file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    try:
        data = jsonio.loads(text)
    except jsonio.JSONError as error:
        raise ValueError("it is not valid JSON (%s)" % error) from None
    version = data.get("format") if isinstance(data, dict) else None
    return Found(identity, upgrade(data, uid, name), version != FORMAT)


# --- the folder ---------------------------------------------------------------------


class StateDir:
    def __init__(self, path: Optional[str] = None) -> None:
        self.path = normalise_dir(path, "state folder") if path else state_dir()
        self.euid = os.geteuid()
        self.peeked: Dict[int, Found] = {}
        self._seen: Dict[int, Found] = {}

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
            parent = os.path.dirname(self.path)
            try:
                os.makedirs(parent, exist_ok=True)
                os.mkdir(self.path, 0o700)
                os.chmod(self.path, 0o1777, follow_symlinks=False)
            except FileExistsError:
                pass
            except OSError as error:
                raise GenvError("cannot create the state folder %s: %s" % (self.path, error.strerror)) from None
            info = os.lstat(self.path)
        except OSError as error:
            raise GenvError("cannot use the state folder %s: %s" % (self.path, error.strerror)) from None
        if stat.S_ISLNK(info.st_mode):
            raise GenvError("refusing to use the state folder %s: it is a symbolic link" % self.path)
        if not stat.S_ISDIR(info.st_mode):
            raise GenvError("the state folder %s is not a folder" % self.path)
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise GenvError(
                "refusing to use the state folder %s: it is writable by everyone without the sticky bit "
                "(fix: chmod 1777 %s)" % (self.path, self.path)
            )

    def open_dir(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise GenvError("refusing to use the state folder %s: it is a symbolic link" % self.path) from None
            raise GenvError("cannot open the state folder %s: %s" % (self.path, error.strerror)) from None

    def transaction(self, timeout: Optional[float] = None, listing: bool = False) -> "Transaction":
        """The lock and every user's state. ``listing``: a command that only
        shows state; it works on a read-only or full folder, with a warning."""
        if listing:
            try:
                self.ensure()
            except GenvError as error:
                if not os.path.lexists(self.path):
                    warn("%s; showing no environments" % error)
                    return Transaction(self, timeout, listing, missing=True)
                raise
        else:
            self.ensure()
        return Transaction(self, timeout, listing)

    def read_all(self, reuse: bool = False) -> Dict[int, Dict[str, Any]]:
        """Every user's state, read without the lock (each file is a
        consistent snapshot, thanks to atomic renames). For readers that
        must never wait, like the nvidia-smi shim; unusable files are
        skipped silently, dead terminals are not pruned. ``reuse``: a file
        unchanged since this folder's last ``read_all`` is not parsed again
        (for a loop that looks every fraction of a second)."""
        users: Dict[int, Dict[str, Any]] = {}
        try:
            dir_fd = self.open_dir()
        except GenvError:
            return users
        try:
            for name in os.listdir(dir_fd):
                digits = name[len(_PREFIX) : -len(_SUFFIX)]
                if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX) and digits.isdigit()):
                    continue
                uid = int(digits)
                try:
                    found = read_user(dir_fd, name, uid, self._seen.get(uid) if reuse else None)
                except (OSError, ValueError, GenvError):
                    continue
                if found is not None:
                    users[uid] = found.data
                    self._seen[uid] = found
        finally:
            os.close(dir_fd)
        return users

    def peek(self, uid: int) -> Optional[Dict[str, Any]]:
        """Read one user's state without the lock (a consistent snapshot,
        thanks to atomic renames); None if missing or unusable."""
        try:
            dir_fd = self.open_dir()
        except GenvError:
            return None
        try:
            found = read_user(dir_fd, self.file_name(uid), uid)
        except (OSError, ValueError, GenvError):
            return None
        finally:
            os.close(dir_fd)
        if found is None:
            return None
        if not found.migrated:
            self.peeked[uid] = found  # the transaction that follows may reuse this parse
        return found.data


def _tmp_owner(name: str) -> Optional[int]:
    """The uid in a temporary name genv writes (``.tmp-<uid>-<pid>-<8 hex>``),
    None if the name is not exactly of that form."""
    parts = name[len(_TMP) :].split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    if len(parts[2]) != 8 or not all(c in "0123456789abcdef" for c in parts[2]):
        return None
    if parts[0] != str(int(parts[0])):
        return None
    return int(parts[0])


class Transaction:
    """Everything under one exclusive lock: read all users, change, write.

    Use as a context manager; changes are written only when the block ends
    without an exception. Never run a subprocess inside the block.
    """

    def __init__(self, folder: StateDir, timeout: Optional[float] = None, listing: bool = False,
                 missing: bool = False) -> None:
        self.folder = folder
        self.timeout = locking.timeout_from_env() if timeout is None else timeout
        self.listing = listing
        self.missing = missing
        self.users: Dict[int, Dict[str, Any]] = {}
        self._dirty: Set[int] = set()
        self._foreign: Set[int] = set()
        self._dir_fd = -1
        self.user_name: Callable[[int], str] = str

    def __enter__(self) -> "Transaction":
        if self.missing:
            self.users[self.folder.euid] = empty_user(self.folder.euid)
            return self
        self._dir_fd = self.folder.open_dir()
        try:
            locking.acquire(self._dir_fd, "the state lock on %s" % self.folder.path, self.timeout,
                            self.user_name, announce=self.timeout >= locking.ANNOUNCE_AFTER)
            self._sweep_and_load()
        except BaseException:
            os.close(self._dir_fd)
            raise
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if self.missing:
            return
        try:
            if kind is None:
                try:
                    for uid in sorted(self._dirty):
                        self._write(uid)
                except GenvError as error:
                    if not self.listing:
                        raise
                    warn("%s; the listing is correct, but the state folder was not updated" % error)
                if self._dirty:
                    files.fault("before-unlock")
        finally:
            os.close(self._dir_fd)  # releases the lock

    # -- reading --

    def _sweep_and_load(self) -> None:
        euid = self.folder.euid
        for name in os.listdir(self._dir_fd):
            if name.startswith(_TMP):
                self._sweep(name)
                continue
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            digits = name[len(_PREFIX) : -len(_SUFFIX)]
            if not digits.isdigit() or digits != str(int(digits)):
                continue
            uid = int(digits)
            try:
                found = read_user(self._dir_fd, name, uid, self.folder.peeked.pop(uid, None))
            except Untrusted as problem:
                self._untrusted(name, uid, str(problem))
                continue
            except Foreign as problem:
                self._foreign.add(uid)
                self._leave_alone(name, uid, str(problem))
                continue
            except OSError as error:
                if error.errno == errno.EACCES:
                    raise GenvError("cannot read %s: permission denied" % self.folder.display(name)) from None
                raise
            except NewerFormat:
                raise
            except ValueError as problem:
                self._damaged(name, uid, str(problem))
                continue
            if found is not None:
                if found.migrated and euid in (0, uid):
                    self._dirty.add(uid)  # written back in the current format
                self.users[uid] = found.data
        if euid not in self.users:
            self.users[euid] = empty_user(euid)

    def _sweep(self, name: str) -> None:
        """Writers create temporary files only while holding the lock: any
        we see now belongs to a writer that was killed. Only genv's own
        names, and (but for root) only the caller's own files."""
        uid = _tmp_owner(name)
        euid = self.folder.euid
        if uid is None or euid not in (0, uid):
            return
        try:
            info = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            if euid == 0 or info.st_uid == euid:
                os.unlink(name, dir_fd=self._dir_fd)
        except OSError:
            pass

    def _untrusted(self, name: str, uid: int, why: str) -> None:
        path = self.folder.display(name)
        if self.folder.euid in (0, uid):
            # In our place (or we are root): a link or FIFO under our own
            # name is removed, never followed.
            try:
                os.unlink(name, dir_fd=self._dir_fd)
                warn("removed %s: %s" % (path, why))
                return
            except OSError:
                pass
        warn("ignoring %s: %s" % (path, why))

    def _leave_alone(self, name: str, uid: int, why: str) -> None:
        path = self.folder.display(name)
        if self.folder.euid in (0, uid):
            warn("ignoring %s: %s, so genv leaves it alone; move it away to use genv" % (path, why))
        else:
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
        name = self.folder.file_name(uid)
        if self.missing:
            raise GenvError("cannot write %s: the state folder is missing" % self.folder.display(name))
        if uid in self._foreign:
            raise GenvError(
                "cannot write %s: a file that genv did not write is in the way; move it away"
                % self.folder.display(name)
            )
        payload = jsonio.dumps(self.users[uid]).encode("ascii") + b"\n"
        tmp = files.temp_name("%s%d-" % (_TMP, uid))
        owner = uid if uid != self.folder.euid else None
        try:
            files.write_atomic(self._dir_fd, name, payload, tmp, 0o644, owner)
        except OSError as error:
            if error.errno in (errno.EPERM, errno.EACCES) and os.path.lexists(self.folder.display(name)):
                raise GenvError(
                    "cannot replace %s: it belongs to another user; ask an administrator to remove it"
                    % self.folder.display(name)
                ) from None
            raise GenvError("cannot write %s: %s" % (self.folder.display(name), error.strerror)) from None

    def all_envs(self) -> Iterator[Any]:
        for uid in sorted(self.users):
            for env in self.users[uid]["envs"]:
                yield uid, env

