"""Text shown to people: the one escaper for names, ids, paths and messages.

Anything a user (or another user) chose can hold control characters that
move the cursor, change colours or retitle the terminal. Every place that
shows such a value to a person (tables, the prompt, ``genv status``, error
messages) passes it through ``printable``.
"""

from __future__ import annotations

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def printable(text: str) -> str:
    """``text`` with control characters, undecodable bytes and backslashes
    written as escapes (``\\n``, ``\\x1b``, ``\\xff``, ``\\\\``)."""
    if text.isprintable() and "\\" not in text:
        return text
    result = []
    for char in text:
        if char in _ESCAPES:
            result.append(_ESCAPES[char])
        elif not char.isprintable():
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
                result.append("\\x%02x" % (code - 0xDC00))
            elif code < 0x100:
                result.append("\\x%02x" % code)
            elif code < 0x10000:
                result.append("\\u%04x" % code)
            else:
                result.append("\\U%08x" % code)
        else:
            result.append(char)
    return "".join(result)


def encodable(text: str) -> bool:
    """Whether ``text`` can be written out (UTF-8, undecodable bytes kept).
    A lone surrogate from a JSON ``\\ud800`` escape cannot."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True
