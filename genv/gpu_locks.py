"""Exclusive locks on GPUs, for environments that share one to take turns.

One lock file per GPU in the state folder, ``gpu-<uuid>.lock`` (mock GPUs:
``gpu-index-<n>.lock``), created by whoever needs it first, mode 0644 so
that every user can open it to ``flock`` it. Opened without following links
or blocking on a FIFO, and only if it is a regular file. Locks are taken in
index order (so that two holders of overlapping sets cannot deadlock) and
held by the open descriptors: they end when the holder closes them or dies.
"""

from __future__ import annotations

import os
import stat

from . import locking
from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import AbstractSet, Any, Callable, Dict, List, Sequence

FOREVER = float("inf")


def file_name(device: Dict[str, Any]) -> str:
    uuid = device.get("uuid")
    if uuid and all(c.isalnum() or c in "-_" for c in uuid):
        return "gpu-%s.lock" % uuid
    return "gpu-index-%d.lock" % device["index"]


def _open(dir_fd: int, name: str, path: str) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                     dir_fd=dir_fd)
    except OSError as error:
        raise GenvError("cannot open the GPU lock %s: %s" % (path, error.strerror)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise GenvError("refusing to use the GPU lock %s: it is not a regular file; ask an administrator "
                        "to remove it" % path)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != 0o644:
        os.fchmod(fd, 0o644)  # whatever the umask: others must be able to open it
    return fd


def _covered(fd: int, covered: AbstractSet[int]) -> bool:
    """Whether the lock on ``fd`` is held now by one of the processes
    ``covered`` (this process's ancestors), per /proc/locks."""
    import errno
    import fcntl

    if not covered:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)  # free: not covered (taken for real below)
        return False
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
    found = locking.holder(fd)
    return found is not None and found[0] in covered


def hold(folder: Any, devices: Sequence[Dict[str, Any]], user: Callable[[int], str],
         timeout: float = FOREVER, covered: AbstractSet[int] = frozenset(), timer: bool = True) -> List[int]:
    """Take the lock of each GPU (index order), waiting as long as it takes
    (saying so on stderr); the descriptors hold them. A GPU whose lock a
    process in ``covered`` holds (an ancestor: an outer ``genv lock``) is
    this process's already, and is skipped. ``timer``: see
    ``locking.acquire``."""
    folder.ensure()
    dir_fd = folder.open_dir()
    held: List[int] = []
    try:
        for device in sorted(devices, key=lambda d: d["index"]):
            name = file_name(device)
            fd = _open(dir_fd, name, folder.display(name))
            held.append(fd)  # closed below if anything goes wrong, from now on
            if _covered(fd, covered):
                held.pop()
                os.close(fd)
                continue
            locking.acquire(fd, "the lock on GPU %d" % device["index"], timeout, user, announce=True,
                            announce_after=0.0, timer=timer)
    except BaseException:
        release(held)
        raise
    finally:
        os.close(dir_fd)
    return held


def release(held: Sequence[int]) -> None:
    for fd in held:
        try:
            os.close(fd)
        except OSError:
            pass
