"""The names genv writes in a state folder (see genv/store.py and
docs/state.md): ``user-<uid>.json`` (a user's state), ``user-<uid>.sync``
(the marker the shell reads) and ``.tmp-<uid>-<pid>-<8 hex digits>`` (a
write in progress). The one place that spells them and reads them back;
a leaf, so that genv.slurm can ask too without importing the store."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Optional

PREFIX = "user-"
SUFFIX = ".json"
MARKER = ".sync"
TMP = ".tmp-"


def _number(text: str) -> Optional[int]:
    """A number as genv writes it in a name (ASCII digits, no leading zero),
    None for anything else: a name of another user's choosing (``user-².json``,
    whose digit ``int`` refuses) is not genv's."""
    if not text.isascii() or not text.isdigit() or len(text) > 20 or text != str(int(text)):
        return None
    return int(text)


def _user_file(name: str, suffix: str) -> Optional[int]:
    """The uid in ``user-<uid><suffix>``, None if the name is not exactly of
    that form."""
    if not (name.startswith(PREFIX) and name.endswith(suffix)):
        return None
    return _number(name[len(PREFIX) : -len(suffix)])


def state_name(uid: int) -> str:
    return "%s%d%s" % (PREFIX, uid, SUFFIX)


def marker_name(uid: int) -> str:
    return "%s%d%s" % (PREFIX, uid, MARKER)


def tmp_prefix(uid: int) -> str:
    """What a temporary name of ``uid``'s starts with (files.temp_name adds
    ``<pid>-<8 hex digits>``)."""
    return "%s%d-" % (TMP, uid)


def state_uid(name: str) -> Optional[int]:
    """The uid in a state file's name (``user-<uid>.json``), None if the name
    is not exactly of that form."""
    return _user_file(name, SUFFIX)


def tmp_owner(name: str) -> Optional[int]:
    """The uid in a temporary name genv writes (``.tmp-<uid>-<pid>-<8 hex>``),
    None if the name is not exactly of that form."""
    if not name.startswith(TMP):
        return None
    parts = name[len(TMP) :].split("-")
    if len(parts) != 3 or _number(parts[1]) is None:
        return None
    if len(parts[2]) != 8 or not all(c in "0123456789abcdef" for c in parts[2]):
        return None
    return _number(parts[0])


def is_own_name(name: str) -> bool:
    """Whether ``name`` is exactly one that genv writes in a state folder: a
    user's state file, a user's marker, or a temporary file. (A damaged file
    moved aside is kept for its owner to look at: not one of these.)"""
    return state_uid(name) is not None or _user_file(name, MARKER) is not None or tmp_owner(name) is not None
