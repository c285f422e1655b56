"""The state folder: one JSON file per user, one lock, atomic replacement.

Layout of ``$GENV_TMPDIR`` (default ``/var/tmp/genv``), see docs/state.md:

- the folder itself, mode 1777 (sticky, like /tmp) so that every local user
  can use genv and nobody can remove or rename another user's files;
- ``user-<uid>.json``: the environments (and device cache) of one user,
  owned by that user, mode 0644, replaced only by that user (or root);
- ``user-<uid>.sync``: a marker the shell reads at each prompt (builtins
  only): a new random token whenever one of that user's environments
  changes what its terminals must follow (its GPUs, its end, a note for
  them), written with the state file, owned by that user;
- ``.tmp-<uid>-<pid>-<8 hex digits>``: a write in progress; a leftover one
  is from a killed writer.

The lock is ``flock`` on the folder itself: there is no lock file that
could be planted, linked or truncated. Every file is opened relative to the
locked folder with ``O_NOFOLLOW`` and must be a regular file owned by the
uid its name says. genv touches only names that are exactly its own (spelled
and read back by genv/state_names.py alone), and a file under such a name
that genv did not write is left alone.
"""

from __future__ import annotations

import errno
import os
import time

from . import files, jsonio, locking
from .errors import GenvError
from .limits import MAX_FILE
from .report import warn
from .schema import FORMAT, NewerFormat, empty_user, upgrade, validate
from .state_names import TMP, marker_name, state_name, state_uid, tmp_owner, tmp_prefix

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

    Identity = Tuple[int, ...]

DEFAULT_DIR = "/var/tmp/genv"


def _signed(raw: bytes) -> bool:
    """Whether the content starts as genv's state does (``{"format"``,
    whitespace allowed): a file under genv's name that does not is somebody
    else's, and is never moved aside or replaced."""
    head = raw[:256].lstrip()
    return head[:1] == b"{" and head[1:].lstrip().startswith(b'"format"')


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
    from .folders import normalise

    return normalise(raw, what)


# --- reading one file -------------------------------------------------------------


class Found:
    """What ``read_user`` found: the file's identity, its state (in the
    current format, damaged environments left out), whether it was upgraded
    from an older format, and what was wrong with each environment dropped."""

    __slots__ = ("identity", "data", "migrated", "dropped")

    def __init__(self, identity: Identity, data: Dict[str, Any], migrated: bool, dropped: List[str]) -> None:
        self.identity, self.data, self.migrated, self.dropped = identity, data, migrated, dropped


class Untrusted(ValueError):
    """Not a file genv wrote: a link, a FIFO, another owner."""


class Foreign(ValueError):
    """A regular file under genv's name whose content genv did not write."""


def read_user(dir_fd: int, name: str, uid: int, known: Optional[Found] = None) -> Optional[Found]:
    """Read one user's file; None if there is none. Raises Untrusted,
    Foreign, ValueError (damage), NewerFormat or OSError. ``known`` is an
    earlier read: if the file is still that very file, it is returned as is."""
    try:
        info, raw = files.read_regular(dir_fd, name, MAX_FILE)
    except FileNotFoundError:
        return None
    except files.NotRegular:
        raise Untrusted("it is not a regular file") from None
    except files.TooLarge:
        raise ValueError("it is larger than %d bytes" % MAX_FILE) from None
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
    state, dropped = upgrade(data, uid, name)
    return Found(identity, state, version != FORMAT, dropped)


# --- the folder ---------------------------------------------------------------------


class StateDir:
    def __init__(self, path: Optional[str] = None) -> None:
        self.path = normalise_dir(path, "state folder") if path else state_dir()
        self.euid = os.geteuid()
        self.peeked: Dict[int, Found] = {}
        self._seen: Dict[int, Found] = {}

    def file_name(self, uid: int) -> str:
        return state_name(uid)

    def marker_name(self, uid: int) -> str:
        return marker_name(uid)

    def display(self, name: str) -> str:
        return os.path.join(self.path, name)

    # The folder is created sticky and world-writable, like /tmp: every user
    # can create their own file, nobody can replace or remove anybody else's.
    def ensure(self) -> None:
        from .folders import ensure_shared

        ensure_shared(self.path)

    def open_dir(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise GenvError("refusing to use the state folder %s: it is a symbolic link" % self.path) from None
            raise GenvError("cannot open the state folder %s: %s" % (self.path, error.strerror)) from None

    def transaction(self, timeout: Optional[float] = None, listing: bool = False,
                    timer: bool = True, fallback: bool = False) -> "Transaction":
        """The lock and every user's state. ``listing``: a command that only
        shows state; it works on a read-only or full folder, with a warning.
        ``timer``: the lock wait may use SIGALRM (genv's own process).
        ``fallback``: when the lock cannot be had in time (anyone can hold
        it), read the state without it and write nothing (``unlocked``)."""
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
        return Transaction(self, timeout, listing, timer=timer, fallback=fallback)

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
                uid = state_uid(name)
                if uid is None:
                    continue
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
        if not found.migrated and not found.dropped:
            self.peeked[uid] = found  # the transaction that follows may reuse this parse
        return found.data


def _views(state: Dict[str, Any]) -> Dict[str, Any]:
    """What each environment's terminals follow (``environments.terminal_view``)."""
    from .environments import terminal_view

    return {env["id"]: terminal_view(env) for env in state["envs"]}


def _changed(before: Dict[str, Any], now: Dict[str, Any]) -> bool:
    """Whether an environment changed for its terminals (one that ended has
    no terminals left to tell, a new one's were told by its command)."""
    return any(eid in before and before[eid] != view for eid, view in now.items())


class Transaction:
    """Everything under one exclusive lock: read all users, change, write.

    Use as a context manager; changes are written only when the block ends
    without an exception. Never run a subprocess inside the block.
    """

    def __init__(self, folder: StateDir, timeout: Optional[float] = None, listing: bool = False,
                 missing: bool = False, timer: bool = True, fallback: bool = False) -> None:
        self.folder = folder
        self.timer = timer
        self.fallback = fallback
        self.unlocked: Optional[str] = None  # read without the lock: who held it
        self.timeout = locking.timeout_from_env() if timeout is None else timeout
        self.listing = listing
        self.missing = missing
        self.users: Dict[int, Dict[str, Any]] = {}
        self._dirty: Set[int] = set()
        self.unwritten: Set[int] = set()  # changed files that could not be written (after the exit)
        self._asked: Set[int] = set()  # the files a change was asked of (not only tidied)
        self._foreign: Set[int] = set()
        self._views: Dict[int, Dict[str, Any]] = {}  # what terminals follow, as read
        self._markers: Dict[int, str] = {}  # the markers as read
        self._fresh: Dict[int, str] = {}  # the new token of a marker to write
        self._dir_fd = -1
        self.user_name: Callable[[int], str] = str

    def __enter__(self) -> "Transaction":
        if self.missing:
            self.users[self.folder.euid] = empty_user(self.folder.euid)
            return self
        self._dir_fd = self.folder.open_dir()
        try:
            try:
                locking.acquire(self._dir_fd, "the state lock on %s" % self.folder.path, self.timeout,
                                self.user_name, announce=self.timeout >= locking.ANNOUNCE_AFTER, timer=self.timer)
            except locking.LockTimeout:
                if not self.fallback:
                    raise
                # Each file is a consistent snapshot (atomic renames): read,
                # change nothing on disk.
                self.unlocked = locking.describe_holder(self._dir_fd, self.user_name)
            self._sweep_and_load()
        except BaseException:
            os.close(self._dir_fd)
            raise
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if self.missing:
            return
        try:
            if kind is None and self.unlocked is None:
                for uid in sorted(self._dirty):
                    try:
                        self._write(uid)
                    except GenvError as error:
                        if uid != self.folder.euid and (uid not in self._asked or self.listing):
                            # Another user's file, which its owner may swap
                            # for a folder under the lock (it binds genv
                            # alone): only what every reader works out for
                            # itself (an end that passed, an older format), or
                            # what a listing (genv enforce) did, is lost.
                            warn("%s; it is left as it was" % error)
                            self.unwritten.add(uid)
                            continue
                        if not self.listing:
                            raise
                        warn("%s; the listing is correct, but the state folder was not updated" % error)
                        self.unwritten |= {later for later in self._dirty if later >= uid}
                        break
                if self._dirty:
                    files.fault("before-unlock")
        finally:
            os.close(self._dir_fd)  # releases the lock

    # -- reading --

    def _sweep_and_load(self) -> None:
        euid = self.folder.euid
        for name in os.listdir(self._dir_fd):
            if name.startswith(TMP):
                self._sweep(name)
                continue
            uid = state_uid(name)
            if uid is None:
                continue
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
            except NewerFormat as newer:
                if uid not in (euid, 0):
                    # Another user's claim of a newer genv must not stop
                    # everyone else's (root's enforcer included): unknown
                    # to this genv, it counts for nothing here, as damage.
                    warn("ignoring %s: it was written by a newer genv (format %d; this genv reads formats up to "
                         "%d), so its environments are not seen here; upgrade genv"
                         % (self.folder.display(name), newer.version, FORMAT))
                    continue
                raise
            except ValueError as problem:
                self._damaged(name, uid, str(problem))
                continue
            if found is not None:
                if (found.migrated or found.dropped) and euid in (0, uid):
                    self._dirty.add(uid)  # written back in the current format, without the damage
                for why in found.dropped:
                    self._dropped(name, uid, why)
                self.users[uid] = found.data
                if euid in (0, uid):  # only those files can be written, so only their markers change
                    self._views[uid] = _views(found.data)
        if euid not in self.users:
            self.users[euid] = empty_user(euid)

    def _sweep(self, name: str) -> None:
        """Writers create temporary files only while holding the lock: any
        we see now belongs to a writer that was killed. Only genv's own
        names, and (but for root) only the caller's own files."""
        uid = tmp_owner(name)
        euid = self.folder.euid
        if uid is None or euid not in (0, uid) or self.unlocked is not None:  # (a live writer's, without the lock)
            return
        try:
            info = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            if euid == 0 or info.st_uid == euid:
                os.unlink(name, dir_fd=self._dir_fd)
        except OSError:
            pass

    def _tidies(self, uid: int) -> bool:
        """Whether this transaction may tidy ``uid``'s file (remove a link
        under its name, move damage aside): its owner's or root's, under
        the lock."""
        return self.folder.euid in (0, uid) and self.unlocked is None

    def _untrusted(self, name: str, uid: int, why: str) -> None:
        path = self.folder.display(name)
        if self._tidies(uid):
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
        if self._tidies(uid):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = "%s.damaged-%s-%d" % (name, stamp, os.getpid())
            try:
                os.rename(name, aside, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                warn("state file %s was damaged (%s); moved it to %s" % (path, why, self.folder.display(aside)))
                return
            except OSError:
                pass
        warn("ignoring damaged state file %s (%s); its owner's next genv command moves it aside" % (path, why))

    def _dropped(self, name: str, uid: int, why: str) -> None:
        path = self.folder.display(name)
        if self._tidies(uid):
            warn("dropped a damaged environment from %s (%s); the others are kept" % (path, why))
        else:
            warn("ignoring a damaged environment in %s (%s)" % (path, why))

    # -- changing --

    def user(self, uid: int) -> Dict[str, Any]:
        if uid not in self.users:
            self.users[uid] = empty_user(uid)
        return self.users[uid]

    def changed(self, uid: int) -> None:
        """``uid``'s state changed: written when the transaction ends, and
        the command fails if it cannot be."""
        self.tidied(uid)
        self._asked.add(uid)

    def tidied(self, uid: int) -> None:
        """``uid``'s state changed only as every reader changes it for
        itself (a reservation that ended): written when the transaction
        ends, but another user's file that cannot be written is left as it
        was, with a warning, and fails nothing."""
        euid = self.folder.euid
        if euid not in (0, uid):
            raise GenvError("cannot change the state of uid %d" % uid)
        self._dirty.add(uid)

    # -- the marker the shell reads --

    def marker(self, uid: int) -> str:
        """The token ``uid``'s marker holds once this transaction is written:
        a new one if the user's file is written and what the terminals of
        one of their environments follow changed, else the one it holds now
        ("" when there is none, or it is not that user's)."""
        if uid not in self._markers:
            self._markers[uid] = self._read_marker(uid)
        if uid in self._dirty and uid in self.users and _changed(self._views.get(uid, {}), _views(self.users[uid])):
            if uid not in self._fresh:
                self._fresh[uid] = os.urandom(8).hex()
            return self._fresh[uid]
        return self._markers[uid]

    def marker_path(self, uid: int) -> str:
        return self.folder.display(self.folder.marker_name(uid))

    def _read_marker(self, uid: int) -> str:
        if self.missing:
            return ""
        try:
            info, raw = files.read_regular(self._dir_fd, self.folder.marker_name(uid), 64)
        except OSError:
            return ""
        if info.st_uid != uid:
            return ""
        token = raw.decode("ascii", "replace").strip()
        # Only what genv writes (hex digits) goes to the shell: another
        # value (a NUL, a quote) written by hand is none.
        return token if all(c in "0123456789abcdef" for c in token) else ""

    def _write_marker(self, uid: int) -> None:
        token = self.marker(uid)
        if token == self._markers.get(uid):
            return
        name = self.folder.marker_name(uid)
        owner = uid if uid != self.folder.euid else None
        try:
            files.write_atomic(self._dir_fd, name, token.encode("ascii") + b"\n", files.temp_name(tmp_prefix(uid)),
                               0o644, owner, durable=False)
        except OSError as error:
            warn("cannot write %s (%s): terminals of this user's environments follow changes at their next genv "
                 "command%s" % (self.folder.display(name), error.strerror or error,
                                "; a file of another user is in the way: ask an administrator to remove it"
                                if error.errno in (errno.EPERM, errno.EACCES) else ""))
        self._markers[uid] = token

    def _write(self, uid: int) -> None:
        name = self.folder.file_name(uid)
        if self.missing:
            raise GenvError("cannot write %s: the state folder is missing" % self.folder.display(name))
        if uid in self._foreign:
            raise GenvError(
                "cannot write %s: a file that genv did not write is in the way; move it away"
                % self.folder.display(name)
            )
        try:
            validate(self.users[uid], uid)  # never write what readers would drop
        except ValueError as problem:
            raise GenvError("internal error: refusing to write %s: %s" % (self.folder.display(name), problem)) \
                from None
        payload = jsonio.dumps(self.users[uid]).encode("ascii") + b"\n"
        # The marker first: a writer killed in between leaves terminals a
        # look that finds nothing new, never a change they miss.
        self._write_marker(uid)
        tmp = files.temp_name(tmp_prefix(uid))
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

