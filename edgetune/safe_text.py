"""One rule for text that reaches a terminal or a log: control and bidi characters are escaped.

Names, paths and fields come from files a stranger made (a bundle, a licence, a data set, a Hub
user name). Printed raw, ``\\r`` and ESC sequences can erase or rewrite what is on screen (a
bundle file named ``x\\r\\033[2KOK: ... verified`` turns a failed ``verify`` into an "OK" line),
and bidi overrides (U+202E) reorder it. ``printable`` turns each such character into a visible
escape that JSON and Python both read back (``\\r``, ``\\u001b``, ``\\u202e``), so a line that
holds JSON stays valid JSON. New lines and tabs are kept: they are layout, and multi-line
messages are ours; ``one_line`` escapes them too, for a field that must stay on its line.
"""

from __future__ import annotations

import re

# C0 controls but tab and line feed, DEL, C1 controls; the bidi controls (LRM, RLM, ALM,
# embeddings/overrides U+202A-202E, isolates U+2066-2069); line and paragraph separators
# (some terminals and editors break lines there); lone surrogates (which cannot be encoded).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_LINE = re.compile(_UNSAFE.pattern[:-1] + "\t\n]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


def printable(text: object) -> str:
    """``text`` (any object: its ``str``) with control, bidi and separator characters escaped;
    new lines and tabs kept."""
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def one_line(text: object) -> str:
    """Like ``printable``, and new lines and tabs escaped too: for one field of a line."""
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE_LINE.sub(_escape, text)
