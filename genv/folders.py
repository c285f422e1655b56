"""Shared folders: the state folder, and the Slurm jobs' folder above the
jobs' state folders. One checked spelling of a path (``normalise``) and one
way to make and trust such a folder (``ensure_shared``): sticky and
writable by all, like /tmp, so that every local user can create their own
files and nobody can remove or rename another user's; never a link.
"""

from __future__ import annotations

import os
import stat

from .errors import GenvError


def normalise(raw: str, what: str) -> str:
    """An absolute path without ``..``, ``.``, repeated or trailing slashes,
    so that checks apply to what the path names."""
    if not raw.startswith("/"):
        raise GenvError("invalid %s %r: it must be an absolute path" % (what, raw))
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise GenvError("invalid %s %r: it must not contain '..'" % (what, raw))
    if not parts:
        raise GenvError("invalid %s %r: not the root folder" % (what, raw))
    return "/" + "/".join(parts)


def ensure_shared(path: str) -> None:
    """Make the folder (mode 1777) unless it exists, and refuse one that is
    a link, not a folder, or writable by all without the sticky bit."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            os.mkdir(path, 0o700)
            os.chmod(path, 0o1777, follow_symlinks=False)
        except FileExistsError:
            pass
        except OSError as error:
            raise GenvError("cannot create the state folder %s: %s" % (path, error.strerror)) from None
        info = os.lstat(path)
    except OSError as error:
        raise GenvError("cannot use the state folder %s: %s" % (path, error.strerror)) from None
    if stat.S_ISLNK(info.st_mode):
        raise GenvError("refusing to use the state folder %s: it is a symbolic link" % path)
    if not stat.S_ISDIR(info.st_mode):
        raise GenvError("the state folder %s is not a folder" % path)
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise GenvError(
            "refusing to use the state folder %s: it is writable by everyone without the sticky bit "
            "(fix: chmod 1777 %s)" % (path, path)
        )
