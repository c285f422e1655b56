"""Process facts: identity, liveness, parent, owner, environment, command line.

This module is the one place that asks the system about processes. A PID
alone is not an identity (PIDs are reused), so a process is recorded with a
*token* made of the boot and its start time, and counts as the same process
only while a process with that PID *and* that token exists.

Two backends answer the same questions:

- ``ProcFS`` reads ``/proc`` directly (Linux). The start time is field 22 of
  ``/proc/<pid>/stat`` in clock ticks since boot, the field psutil's
  ``create_time`` is computed from; comparing integer ticks means a step of
  the wall clock cannot make a live terminal look dead. ``import psutil``
  costs about three interpreter start-ups, so the commands a shell runs use
  this backend.
- ``Psutil`` asks psutil: where ``/proc`` is missing, when
  ``GENV_PROCESS_BACKEND=psutil`` is set (tests and CI run the suite that way
  too), and in long-running commands that may pay for it. On Linux it builds
  the very same tokens, so both backends agree on who is alive.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
ENV_VAR_LIMIT = 4 << 20  # read at most this much of /proc/<pid>/environ


def _read(path: str, limit: int = 4096, dir_fd: Optional[int] = None) -> Optional[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks = []
        while limit > 0:
            chunk = os.read(fd, min(limit, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            limit -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def boot_id() -> Optional[str]:
    """This boot's random id (Linux), None elsewhere."""
    raw = _read(_BOOT_ID)
    return raw.strip().decode("ascii", "replace") if raw else None


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        # Started with -S: site-packages are not on sys.path yet.
        import site

        site.main()
        import psutil
    return psutil


def processes() -> "ProcFS":
    """The backend for this system (see the module's docstring)."""
    if os.environ.get("GENV_PROCESS_BACKEND") == "psutil" or not os.path.isdir("/proc/self"):
        return Psutil()
    return ProcFS()


class ProcFS:
    """Answers questions about processes for one command, from /proc, and
    remembers the answers (a command sees one consistent picture)."""

    names = True
    """Whether ``name`` is the kernel's name of the process, which a process
    sets for itself (Linux: ``/proc/<pid>/comm``)."""

    def __init__(self) -> None:
        boot = boot_id()
        # Eight hex digits of the random boot id tell this boot from earlier
        # ones; the full id would be most of the state file's size.
        self._boot: Optional[str] = boot[:8] if boot else None
        self._proc_fd = -1
        try:
            self._proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            pass
        self._empty_caches()

    def _empty_caches(self) -> None:
        """The answers remembered (per PID, per folder): none yet."""
        self._stat: Dict[int, Optional[Tuple[str, int, float, str]]] = {}
        self._uid: Dict[int, Optional[int]] = {}
        self._system_folders: Dict[str, bool] = {}
        self._programs: Dict[int, Optional[Tuple[str, os.stat_result]]] = {}

    def close(self) -> None:
        """Let go of the open /proc (also when the object is dropped: a
        long-running waiter or monitor asks afresh many times)."""
        if self._proc_fd >= 0:
            try:
                os.close(self._proc_fd)
            except OSError:
                pass
            self._proc_fd = -1

    def __del__(self) -> None:
        self.close()

    def this_boot(self) -> Optional[str]:
        """This boot, as tokens name it (8 hex digits of its id); None elsewhere."""
        return self._boot

    # -- identity and liveness --

    def _stat_of(self, pid: int) -> Optional[Tuple[str, int, float, str]]:
        """(state, parent pid, start ticks, name) of a process, None if there is none."""
        if pid in self._stat:
            return self._stat[pid]
        result = None
        if pid > 0 and self._proc_fd >= 0:
            # Relative to an open /proc: one path lookup less per process,
            # which matters with a thousand environments.
            data = _read("%d/stat" % pid, 1024, self._proc_fd)
            if data:
                # The command name (field 2) may hold spaces and parentheses:
                # split after its closing parenthesis. Then field 3 is the
                # state, field 4 the parent and field 22 the start time.
                end = data.rfind(b")")
                fields = data[end + 2 :].split(None, 20)
                if len(fields) >= 20:
                    try:
                        name = data[data.find(b"(") + 1 : end].decode("utf-8", "surrogateescape")
                        result = (fields[0].decode("ascii"), int(fields[1]), int(fields[19]), name)
                    except ValueError:
                        result = None
        self._stat[pid] = result
        return result

    def token(self, pid: int) -> Optional[str]:
        """The identity token of a running process, None if there is none."""
        found = self._stat_of(pid)
        if found is None or found[0] in ("Z", "X"):
            return None
        return "linux:%s:%d" % (self._boot, found[2])

    def alive(self, pid: int, token: str) -> bool:
        return self.token(pid) == token

    def state(self, pid: int) -> Optional[str]:
        """The process's state as the kernel gives it (``R``, ``S``, ``T``
        stopped, ``t`` stopped by a tracer, ``Z`` ...), None if there is none."""
        found = self._stat_of(pid)
        return None if found is None else found[0]

    def name(self, pid: int) -> Optional[str]:
        """The name the kernel keeps for the process (``comm``: its
        program's name, up to 15 bytes, or what it set since); None if
        there is no such process."""
        found = self._stat_of(pid)
        return None if found is None else found[3]

    def started_before(self, pid: int, mark: float) -> Optional[bool]:
        """Whether the process started before ``mark`` (a ``clock()`` value);
        None if there is no such process. Start times are whole clock ticks,
        rounded down: a process started in the very tick of ``mark`` counts
        as started after it, so a PID reused just after ``mark`` is never
        taken for the process that had it before."""
        found = self._stat_of(pid)
        if found is None:
            return None
        return found[2] < int(mark * _ticks_per_second())

    def clock(self) -> float:
        """Now, for ``started_before``: seconds since boot."""
        import time

        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def started(self, pid: int) -> Optional[float]:
        """When the process started, on the scale of ``clock()`` (seconds
        since boot, to the clock tick, rounded down: a wall-clock step does
        not move it); None if there is no such process."""
        found = self._stat_of(pid)
        if found is None:
            return None
        return found[2] / _ticks_per_second()

    # -- relations and owner --

    def parent(self, pid: int) -> Optional[int]:
        found = self._stat_of(pid)
        return None if found is None else found[1]

    def uid(self, pid: int) -> Optional[int]:
        """The real uid (``Uid:`` in /proc/<pid>/status), None if unknown."""
        if pid in self._uid:
            return self._uid[pid]
        result = None
        if pid > 0 and self._proc_fd >= 0:
            data = _read("%d/status" % pid, 8192, self._proc_fd)
            at = data.find(b"\nUid:") if data else -1
            if data and at >= 0:
                parts = data[at + 5 : data.find(b"\n", at + 5)].split()
                if parts and parts[0].isdigit():
                    result = int(parts[0])
        self._uid[pid] = result
        return result

    # -- what the process was started with --

    def environ(self, pid: int, name: str) -> Optional[str]:
        """The value of ``name`` in the environment the process was started
        with; None if unset or unreadable (another user's process)."""
        if pid <= 0 or self._proc_fd < 0:
            return None
        data = _read("%d/environ" % pid, ENV_VAR_LIMIT, self._proc_fd)
        return _find_var(data, name) if data else None

    def executable(self, pid: int) -> Optional[str]:
        """The program the process runs (``/proc/<pid>/exe``: not the name it
        gives itself in argv[0]); None if unreadable (another user's)."""
        if pid <= 0 or self._proc_fd < 0:
            return None
        try:
            path = os.readlink("%d/exe" % pid, dir_fd=self._proc_fd)
        except OSError:
            return None
        return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path

    def _program(self, pid: int) -> Optional[Tuple[str, os.stat_result]]:
        """``_find_program``, once per process (``program`` and
        ``system_program`` both ask)."""
        if pid not in self._programs:
            self._programs[pid] = self._find_program(pid)
        return self._programs[pid]

    def _find_program(self, pid: int) -> Optional[Tuple[str, os.stat_result]]:
        """The path of the file the process runs and that file's status,
        only when the path names that very file here: /proc gives the path
        as the process's own mount namespace has it, and a user may make
        one of their own (``unshare -Urm``) where their copy of a program
        is mounted at any path, /usr/bin/nvidia-cuda-mps-server included."""
        path = self.executable(pid)
        if not path or not path.startswith("/"):
            return None
        try:
            if self._proc_fd >= 0:
                info = os.stat("%d/exe" % pid, dir_fd=self._proc_fd)  # the file it runs, even if renamed
            elif os.path.isdir("/proc/self"):  # the psutil backend on Linux
                info = os.stat("/proc/%d/exe" % pid)
            else:  # no /proc: the path is all there is
                info = os.stat(path)
            here = os.stat(path)
        except OSError:
            return None
        if (info.st_dev, info.st_ino) != (here.st_dev, here.st_ino):
            return None
        return path, info

    def program(self, pid: int) -> Optional[str]:
        """The path of the program the process runs, when it names that
        very file here (see ``_program``); None otherwise or if unknown."""
        found = self._program(pid)
        return found[0] if found is not None else None

    def system_program(self, pid: int) -> bool:
        """Whether the program the process runs is the system's: the very
        file it runs (``/proc/<pid>/exe``), under a path that names that
        file here, and every folder above that path belong to root and are
        writable by nobody else (so no user can have put it there, or
        copied one there). False when unknown."""
        found = self._program(pid)
        if found is None:
            return False
        path, info = found
        return _root_only(info) and self._system_folder(os.path.dirname(path))

    def _system_folder(self, folder: str) -> bool:
        """The folder and every one above it: root's, writable by root only."""
        if folder not in self._system_folders:
            import stat

            try:
                info = os.lstat(folder)
                ok = stat.S_ISDIR(info.st_mode) and _root_only(info)
            except OSError:
                ok = False
            if ok and folder != "/":
                ok = self._system_folder(os.path.dirname(folder))
            self._system_folders[folder] = ok
        return self._system_folders[folder]

    def command(self, pid: int) -> Optional[str]:
        """The command line, arguments joined by spaces; None if unreadable."""
        if pid <= 0 or self._proc_fd < 0:
            return None
        data = _read("%d/cmdline" % pid, 4096, self._proc_fd)
        if not data:
            return None
        return " ".join(part.decode("utf-8", "surrogateescape") for part in data.rstrip(b"\0").split(b"\0"))

    def cgroup(self, pid: int) -> Optional[str]:
        """The control groups the process is in (``/proc/<pid>/cgroup``,
        readable for every process: a kernel fact that Slurm's jobs show
        in); None if unreadable."""
        if pid <= 0:
            return None
        if self._proc_fd >= 0:
            data = _read("%d/cgroup" % pid, 16384, self._proc_fd)
        else:
            data = _read("/proc/%d/cgroup" % pid, 16384)
        return data.decode("utf-8", "replace") if data else None


def _root_only(info: os.stat_result) -> bool:
    """Owned by root and not writable by group or others."""
    return info.st_uid == 0 and not info.st_mode & 0o022


def _find_var(data: bytes, name: str) -> Optional[str]:
    key = name.encode("ascii") + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode("utf-8", "surrogateescape")
    return None


_TICKS: List[int] = []


def _ticks_per_second() -> int:
    if not _TICKS:
        _TICKS.append(os.sysconf("SC_CLK_TCK"))
    return _TICKS[0]


class Psutil(ProcFS):
    """The same answers from psutil (see the module's docstring)."""

    def __init__(self) -> None:
        self._psutil = _psutil()
        self._boot = None
        boot = boot_id()
        if boot is not None:
            self._boot = boot[:8]
        self.names = boot is not None  # elsewhere a process cannot name itself as genv does
        self._boot_time = self._psutil.boot_time()
        self._empty_caches()
        self._proc_fd = -1
        self._processes: Dict[int, Any] = {}

    def _process(self, pid: int) -> Any:
        if pid not in self._processes:
            try:
                self._processes[pid] = self._psutil.Process(pid) if pid > 0 else None
            except (self._psutil.Error, ValueError, OverflowError):
                self._processes[pid] = None
        return self._processes[pid]

    def _stat_of(self, pid: int) -> Optional[Tuple[str, int, float, str]]:
        if pid in self._stat:
            return self._stat[pid]
        result = None
        process = self._process(pid)
        if process is not None:
            psutil = self._psutil
            try:
                with process.oneshot():
                    status, ppid, created = process.status(), process.ppid(), process.create_time()
                    name = process.name()
                state = {psutil.STATUS_ZOMBIE: "Z", psutil.STATUS_DEAD: "Z", psutil.STATUS_STOPPED: "T",
                         psutil.STATUS_TRACING_STOP: "t"}.get(status, "R")
                result = (state, ppid, created, name)
            except (psutil.Error, ValueError):
                result = None
        self._stat[pid] = result
        return result

    def token(self, pid: int) -> Optional[str]:
        found = self._stat_of(pid)
        if found is None or found[0] == "Z":
            return None
        created = found[2]
        if self._boot is not None:
            # The ticks since boot, so that the token is /proc's very token.
            return "linux:%s:%d" % (self._boot, self._ticks(created))
        return "psutil:%r" % created

    def _ticks(self, created: float) -> int:
        # psutil computes create_time as boot time + ticks / CLK_TCK: recover the ticks.
        return int(round((created - self._boot_time) * _ticks_per_second()))

    def started_before(self, pid: int, mark: float) -> Optional[bool]:
        found = self._stat_of(pid)
        if found is None:
            return None
        if self._boot is not None:  # Linux: ticks since boot, as /proc gives them
            return self._ticks(found[2]) < int(mark * _ticks_per_second())
        return found[2] < mark

    def started(self, pid: int) -> Optional[float]:
        found = self._stat_of(pid)
        if found is None:
            return None
        if self._boot is not None:  # Linux: ticks since boot, as /proc gives them
            return self._ticks(found[2]) / _ticks_per_second()
        return found[2]  # elsewhere clock() is Unix time, as create_time is

    def clock(self) -> float:
        import time

        if self._boot is not None:
            return time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time()

    def uid(self, pid: int) -> Optional[int]:
        if pid in self._uid:
            return self._uid[pid]
        result = None
        process = self._process(pid)
        if process is not None:
            try:
                result = int(process.uids().real)
            except (self._psutil.Error, ValueError):
                result = None
        self._uid[pid] = result
        return result

    def environ(self, pid: int, name: str) -> Optional[str]:
        process = self._process(pid)
        if process is None:
            return None
        try:
            return process.environ().get(name)  # type: ignore[no-any-return]
        except (self._psutil.Error, ValueError, OSError):
            return None

    def executable(self, pid: int) -> Optional[str]:
        process = self._process(pid)
        if process is None:
            return None
        try:
            return str(process.exe()) or None
        except (self._psutil.Error, ValueError, OSError):
            return None

    def command(self, pid: int) -> Optional[str]:
        process = self._process(pid)
        if process is None:
            return None
        try:
            parts = process.cmdline()
        except (self._psutil.Error, ValueError, OSError):
            return None
        return " ".join(parts) if parts else None
