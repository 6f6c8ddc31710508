"""One strict JSON reader for everything signed or handed to us: manifests, licences,
revocation lists, persona files, data rows.

Python's ``json`` keeps the last of two equal keys (an app whose parser keeps the first would
see other terms than we verified), recurses until ``RecursionError`` on deep nesting, raises
``ValueError`` on an integer over 4,300 digits, accepts ``NaN`` and lone surrogates, and reads
any size. Here each of those is refused with a one-line reason, as :class:`JsonRejected` (a
``ValueError``, so existing ``except ValueError`` handlers still hold), and :func:`read` turns
it into an EdgetuneError naming the file. The limits per kind are in mobile_bundle/SPEC.md
("JSON limits"), which the reference verifier applies too, so apps can match them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import ConfigError, EdgetuneError

MAX_DEPTH = 64  # nested objects and arrays; real files use fewer than 8
MAX_NUMBER = 64  # characters in one number literal; sizes and counts need at most 20


@dataclass(frozen=True)
class Kind:
    name: str  # "manifest": what the file is, in messages
    max_bytes: int
    # NaN, Infinity and 1e999 refused here; data rows let them through to their own check,
    # which names the field ("field 'answer' is not a finite number").
    finite: bool = True


MANIFEST = Kind("manifest", 1 << 20)  # a real one is 2-20 KB (templates, prompts, eval)
LICENCE = Kind("licence", 64 << 10)  # about 0.7 KB
REVOCATIONS = Kind("revocation list", 16 << 20)  # about 100,000 revoked licences
PERSONA = Kind("persona file", 1 << 20)
DATA_ROW = Kind("data row", 64 << 20, finite=False)  # one JSONL line; data.py checks length
DATA_FILE = Kind("data file", 2 << 30, finite=False)  # a .json list of rows
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonRejected(ValueError):
    """Not JSON, or JSON beyond a limit. ``lineno``/``colno`` when the position is known."""

    def __init__(self, why: str, lineno: int | None = None, colno: int | None = None):
        super().__init__(why)
        self.why, self.lineno, self.colno = why, lineno, colno

    def __str__(self) -> str:
        """``not valid JSON (Expecting ',' delimiter at line 2, column 7)`` or the limit."""
        where = f" at line {self.lineno}, column {self.colno}" if self.lineno else ""
        return f"not valid JSON ({self.why}{where})" if self.lineno else self.why


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise JsonRejected(f"duplicate key {json.dumps(key)}")
            seen.add(key)
    return obj


def _number(kind: type, finite: bool) -> Any:
    def parse(literal: str) -> Any:
        if len(literal) > MAX_NUMBER:  # before int(): Python refuses over 4,300 digits itself
            raise JsonRejected(f"a number of {len(literal):,} characters (at most {MAX_NUMBER})")
        value = kind(literal)
        if finite and value in (float("inf"), float("-inf")):  # 1e999
            raise JsonRejected(f"{literal} is too large for a number")
        return value
    return parse


def _constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not JSON")


_DECODERS = {finite: json.JSONDecoder(
    object_pairs_hook=_object, parse_int=_number(int, finite),
    parse_float=_number(float, finite), **({"parse_constant": _constant} if finite else {}))
    for finite in (True, False)}


def _check_depth(value: Any) -> None:
    """Level by level, containers only (a walk over every value costs more than the parse)."""
    level, depth = [value] if isinstance(value, (dict, list)) else [], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise JsonRejected(f"nested deeper than {MAX_DEPTH} levels")
        level = [child for item in level for child in (item.values() if isinstance(item, dict)
                                                       else item)
                 if isinstance(child, (dict, list))]


def _check_surrogates(value: Any) -> None:
    """Lone surrogates (from a ``\\ud800`` escape) cannot be written or printed as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            raise JsonRejected("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")


def loads(data: str | bytes, kind: Kind) -> Any:
    """Parse ``data`` (UTF-8 bytes or text) under ``kind``'s limits; JsonRejected otherwise."""
    size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode("utf-8",
                                                                                      "replace"))
    if size > kind.max_bytes:
        raise JsonRejected(f"{size:,} bytes, over the {_size(kind.max_bytes)} limit for a "
                           f"{kind.name}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonRejected(f"not UTF-8 (byte {e.start})") from None
    data = data.removeprefix("\ufeff")
    try:
        value, end = _DECODERS[kind.finite].raw_decode(data, len(data) - len(data.lstrip()))
    except json.JSONDecodeError as e:
        raise JsonRejected(e.msg, e.lineno, e.colno) from None
    except JsonRejected:
        raise
    except ValueError as e:  # e.g. int() of a literal the scanner let through
        raise JsonRejected(f"not valid JSON ({e})") from None
    except RecursionError:
        raise JsonRejected(f"nested deeper than {MAX_DEPTH} levels") from None
    if data[end:].strip():
        extra = json.JSONDecodeError("Extra data", data, end)
        raise JsonRejected(extra.msg, extra.lineno, extra.colno)
    _check_depth(value)
    if _SURROGATE_ESCAPE.search(data):  # only an escape can make one: skip the walk otherwise
        _check_surrogates(value)
    return value


def read_bytes(path: Path, kind: Kind) -> bytes:
    """The file's bytes, never more than ``kind``'s limit read (JsonRejected beyond it);
    OSError as raised."""
    with open(path, "rb") as fh:
        data = fh.read(kind.max_bytes + 1)
    if len(data) > kind.max_bytes:
        raise JsonRejected(f"over the {_size(kind.max_bytes)} limit for a {kind.name}")
    return data


def read(path: Path, kind: Kind, *, error: type[EdgetuneError] = ConfigError,
         hint: str | None = None, **error_args: Any) -> Any:
    """Read and parse ``path``; every failure is ``error("<path>: <why>", hint)``."""
    path = Path(path)
    try:
        return loads(read_bytes(path, kind), kind)
    except FileNotFoundError:
        why = "file not found"
    except IsADirectoryError:
        why = "a folder, not a file"
    except OSError as e:
        why = f"cannot read ({e.strerror})"
    except JsonRejected as e:
        why = str(e)
    raise error(f"{path}: {why}", hint, **error_args)
