"""Process identity: is the terminal that activated still the same process?

A PID alone is not an identity: PIDs are reused. A terminal is recorded with
a token made of the boot and the process's start time, and counts as alive
only while a process with that PID *and* that token exists.

On Linux the token is read from ``/proc/<pid>/stat`` (the start time, in
clock ticks since boot, is the field psutil's ``create_time`` is computed
from) and ``/proc/sys/kernel/random/boot_id``; comparing integer ticks
instead of psutil's float seconds means that a change of the wall clock
cannot make a live terminal look dead. Importing psutil costs about three
interpreter start-ups, so it is used only where ``/proc`` is missing.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Dict, Optional


_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _read(path: str) -> Optional[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _psutil():  # type: ignore[no-untyped-def]
    try:
        import psutil
    except ImportError:
        # Started with -S: site-packages are not on sys.path yet.
        import site

        site.main()
        import psutil
    return psutil


class Processes:
    """Answers liveness questions; caches the boot id for one command."""

    def __init__(self) -> None:
        boot = _read(_BOOT_ID)
        # Eight hex digits of the random boot id tell this boot from earlier
        # ones; the full id would be most of the state file's size.
        self._boot: Optional[str] = boot.strip().decode("ascii", "replace")[:8] if boot else None
        self._proc_fd = -1
        if self._boot is not None:
            try:
                self._proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                pass
        self._cache: Dict[int, Optional[str]] = {}

    def token(self, pid: int) -> Optional[str]:
        """The identity token of a running process, None if there is none."""
        if pid in self._cache:
            return self._cache[pid]
        token = self._linux_token(pid) if self._proc_fd >= 0 else self._psutil_token(pid)
        self._cache[pid] = token
        return token

    def alive(self, pid: int, token: str) -> bool:
        return self.token(pid) == token

    def _linux_token(self, pid: int) -> Optional[str]:
        if pid <= 0:
            return None
        # Relative to an open /proc: one path lookup less per process, which
        # matters with a thousand environments.
        try:
            fd = os.open("%d/stat" % pid, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._proc_fd)
        except OSError:
            return None
        try:
            data = os.read(fd, 1024)
        except OSError:
            return None
        finally:
            os.close(fd)
        # The command name (field 2) may hold spaces and parentheses: split
        # after its closing parenthesis. Then field 3 is the state and field
        # 22 the start time.
        fields = data[data.rfind(b")") + 2 :].split(None, 20)
        if len(fields) < 20 or fields[0] in (b"Z", b"X"):
            return None
        return "linux:%s:%s" % (self._boot, fields[19].decode("ascii"))

    @staticmethod
    def _psutil_token(pid: int) -> Optional[str]:
        psutil = _psutil()
        try:
            process = psutil.Process(pid)
            if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None
            return "psutil:%r" % process.create_time()
        except (psutil.Error, ValueError):
            return None
