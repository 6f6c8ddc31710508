"""What licences and revocation lists share: their exit codes, id formats and UTC stamps.

Exit codes 12-16 follow the bundle's 2-11: ``mobile_bundle/SPEC.md`` ("Licences").
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

EXIT_BAD_SIGNATURE = 12  # licence or revocation list not signed by this key
EXIT_EXPIRED = 13
EXIT_OTHER_BUNDLE = 14  # bound to another bundle_id or version
EXIT_REVOKED = 15
EXIT_MALFORMED = 16  # missing, unreadable or malformed licence or revocation list

ASK_CREATOR = "Ask the creator for a new licence file."

BUNDLE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
LICENCE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
HEX64_PATTERN = re.compile(r"[0-9a-f]{64}")
STAMP_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def utc(now: datetime | None) -> datetime:
    """``now`` (naive means UTC) or the current time, in UTC, to whole seconds."""
    now = now or datetime.now(timezone.utc)
    now = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    return now.replace(microsecond=0)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
