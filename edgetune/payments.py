"""Who paid: the creator's payments CSV (``hf_username`` and/or ``email`` columns), and the
payment email a follower typed into a gated repo's access form (``bundle.GATED_EMAIL_FIELD``).

``edgetune followers sync`` accepts the access requests that match (``edgetune.followers``).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.bundle import GATED_EMAIL_FIELD
from edgetune.errors import DataError

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def payment_email(request: Any) -> str | None:
    """The follower's answer to the access form's payment-email field (key matched loosely)."""
    fields = getattr(request, "fields", None) or {}
    wanted = GATED_EMAIL_FIELD.strip().lower()
    for key, value in fields.items():
        if isinstance(key, str) and key.strip().lower() == wanted and isinstance(value, str):
            return value.strip() or None
    return None


@dataclass(frozen=True)
class Payments:
    """Who paid: Hugging Face usernames and payment emails, both lowercased and trimmed."""

    path: Path
    usernames: frozenset[str]
    emails: frozenset[str]
    rows: int

    def match(self, request: Any) -> tuple[str, str | None] | None:
        """How ``request`` matches: ("username", None), ("email", email), or None."""
        if request.username.lower() in self.usernames:
            return "username", None
        for email in _emails_of(request):
            if email in self.emails:
                return "email", email
        return None


def _emails_of(request: Any) -> list[str]:
    found = [e.strip().lower() for e in (getattr(request, "email", None), payment_email(request))
             if isinstance(e, str) and e.strip()]
    return list(dict.fromkeys(found))


def _column(name: str) -> str:
    """Header names compare without case, spaces, '-' and '_': "HF Username", "E-Mail" work."""
    return re.sub(r"[\s_-]+", "", name.strip().lower())


_PAYMENTS_HINT = ("payments.csv needs a header row with an hf_username column, an email column, "
                  "or both (comma-separated, UTF-8); other columns are ignored")


def read_payments(path: Path) -> Payments:
    """Read a payments CSV: header row with ``hf_username`` and/or ``email`` (any case).

    Extra columns are ignored, a UTF-8 BOM and blank lines are fine, a ``;`` or tab separated
    file is read too. Every bad line is reported together as ``file:line: what``, so that one
    edit fixes them all; an empty list is refused (rejecting everyone is never what was meant).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}", _PAYMENTS_HINT) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x})",
                        "save the file as CSV UTF-8 (in a spreadsheet: File > Save as > "
                        "CSV UTF-8)") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = ","
    if "," not in first:
        delimiter = next((d for d in (";", "\t") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    problems: list[str] = []
    header: list[str] | None = None
    header_line = 0
    usernames: set[str] = set()
    emails: set[str] = set()
    rows = 0
    user_col = email_col = None
    previous = 0
    while True:
        start = previous + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}:{start}: malformed CSV ({e})",
                            "check the quotes on that line: a cell with a comma or a quote "
                            "must be in double quotes, with inner quotes doubled") from None
        previous = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if header is None:
            header, header_line = [_column(c) for c in row], start
            user_col = _find(header, "hf_username", path, start)
            email_col = _find(header, "email", path, start)
            if user_col is None and email_col is None:
                shown = ", ".join(c.strip() for c in row)[:200]
                raise DataError(f"{path}:{start}: no hf_username or email column in the header "
                                f"({shown})", _PAYMENTS_HINT)
            continue
        rows += 1
        if len(row) > len(header):
            problems.append(f"{path}:{start}: {len(row)} cells but the header has "
                            f"{len(header)} columns (quote cells that contain '{delimiter}')")
            continue
        user = row[user_col].strip().lstrip("@") if user_col is not None and user_col < len(row) \
            else ""
        email = row[email_col].strip() if email_col is not None and email_col < len(row) else ""
        if not user and not email:
            problems.append(f"{path}:{start}: no hf_username and no email on this line")
            continue
        if user:
            if "@" in user and _EMAIL.fullmatch(user):
                problems.append(f"{path}:{start}: hf_username {user!r} looks like an email: "
                                "put it in the email column")
                continue
            if not _USERNAME.fullmatch(user):
                problems.append(f"{path}:{start}: hf_username {user!r} is not a Hugging Face "
                                "username (letters, digits, '-', '_', '.')")
                continue
            usernames.add(user.lower())
        if email:
            if not _EMAIL.fullmatch(email):
                problems.append(f"{path}:{start}: email {email!r} is not an email address")
                continue
            emails.add(email.lower())
    if header is None:
        raise DataError(f"{path}:1: the file is empty", _PAYMENTS_HINT)
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise DataError("; ".join(problems[:20]) + more,
                        "fix these lines (or delete them) and run again; nothing was changed")
    if not rows:
        raise DataError(f"{path}:{header_line + 1}: no payments listed under the header",
                        "add one line per payment (an empty list would accept nobody)")
    return Payments(path, frozenset(usernames), frozenset(emails), rows)


def _find(header: list[str], name: str, path: Path, line: int) -> int | None:
    where = [i for i, col in enumerate(header) if col == _column(name)]
    if len(where) > 1:
        raise DataError(f"{path}:{line}: the header has {len(where)} {name} columns",
                        "keep one of them")
    return where[0] if where else None
