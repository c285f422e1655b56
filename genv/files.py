"""Files genv reads and writes in folders others can write to.

One reader and one writer, used for the state folder and for ``.genv``
folders alike. Both work relative to an open folder descriptor, never follow
a symbolic link, and never block on a FIFO or a device:

- ``read_regular`` opens with ``O_NOFOLLOW|O_NONBLOCK``, accepts only a
  regular file, and reads at most a given size;
- ``write_atomic`` writes a new temporary file (``O_CREAT|O_EXCL|
  O_NOFOLLOW``), loops until every byte is written, fsyncs it, renames it
  over the old file and fsyncs the folder: a process killed at any instant
  leaves the old or the new file, never a mix.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Optional, Tuple


class NotRegular(OSError):
    """The name is something other than a regular file (FIFO, device, folder)."""


class TooLarge(OSError):
    """The file is larger than the reader accepts."""


def fault(point: str) -> None:
    """Test hook: GENV_FAULT=<point> kills this process at that point."""
    if os.environ.get("GENV_FAULT") == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _no_fault(point: str) -> None:
    """(A write that is only a hint is not a point the tests kill at.)"""


def read_regular(dir_fd: int, name: str, max_bytes: int) -> Tuple[os.stat_result, bytes]:
    """The status and content of a regular file. Raises FileNotFoundError,
    OSError (ELOOP for a link), NotRegular or TooLarge."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular("not a regular file")
        if info.st_size > max_bytes:
            raise TooLarge("larger than %d bytes" % max_bytes)
        chunks = []
        left = max_bytes + 1  # a file growing past the limit is caught too
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise TooLarge("larger than %d bytes" % max_bytes)
        return info, b"".join(chunks)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(dir_fd: int, name: str, payload: bytes, tmp: str, mode: int = 0o644,
                 owner: Optional[int] = None, durable: bool = True) -> None:
    """Replace ``name`` in the folder ``dir_fd`` with ``payload``, through the
    temporary name ``tmp``. ``owner``: give the file to this uid (root
    writing a user's file). ``durable``: fsync the file and the folder (a
    hint that a crash may lose does without). Raises OSError; the temporary
    file is removed."""
    fault_at = fault if durable else _no_fault
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            if owner is not None:
                os.fchown(fd, owner, -1)
            fault_at("before-write")
            half = len(payload) // 2
            write_all(fd, payload[:half])
            fault_at("mid-write")
            write_all(fd, payload[half:])
            fault_at("before-fsync")
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        fault_at("before-rename")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    fault_at("after-rename")
    if durable:
        os.fsync(dir_fd)


def temp_name(prefix: str) -> str:
    """A fresh temporary name: ``<prefix><pid>-<8 hex digits>``."""
    return "%s%d-%s" % (prefix, os.getpid(), os.urandom(4).hex())
