"""The revocation floor: the newest revocation-list sequence this machine has seen, per creator.

A revocation list only ever grows, so an older list is a list with revocations taken out. Each
list that verifies (``verify --license``, ``pull``, ``license revoke``) raises its creator's
floor in ``$EDGETUNE_HOME/revocations/<key_id>.json``; a licence check then refuses a list
below the floor, and refuses to run without a list once one was seen. Only signed lists raise
it, so nobody without the creator's key can push it up. Deleting the file lowers it: that is
the one way back, on purpose (README, "Security").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edgetune import paths
from edgetune.artifacts import write_json_atomic
from edgetune.errors import ConfigError
from edgetune.licences.formats import HEX64_PATTERN, stamp, utc


@dataclass(frozen=True)
class SeenList:
    """The newest revocation list a machine has seen for one creator key."""

    key_id: str
    sequence: int
    issued: str  # the list's own ``issued`` stamp
    seen: str  # when this machine first saw that sequence (UTC stamp)
    source: str  # where it came from: a file, or a repo

    def describe(self) -> str:
        return f"sequence {self.sequence} seen on {self.seen[:10]} ({self.source})"


def floor_file(key_id: str) -> Path:
    if not HEX64_PATTERN.fullmatch(key_id):  # it names a file: never a path from outside
        raise ValueError(f"not a key id: {key_id!r}")
    return paths.revocations_dir() / f"{key_id}.json"


def seen_list(key_id: str) -> SeenList | None:
    """The floor for ``key_id``, or None when this machine has seen no list of that creator."""
    path = floor_file(key_id)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        seen = SeenList(key_id, record["sequence"], str(record["issued"]), str(record["seen"]),
                        str(record["source"]))
        if type(seen.sequence) is not int or seen.sequence < 1:
            raise ValueError("bad sequence")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        # Failing closed: ignoring a broken record would let an older list through.
        raise ConfigError(f"{path}: the record of the newest revocation list seen is unreadable "
                          f"({e})", "It keeps older lists from un-revoking licences. Delete it "
                          "only if you trust the revocation list you pass next.") from None
    return seen


def remember(key_id: str, sequence: int, issued: str, source: str,
             now: datetime | None = None) -> None:
    """Raise the floor for ``key_id`` to ``sequence`` (never lower it). Call only with a list
    whose signature verified."""
    old = seen_list(key_id)
    if old is not None and old.sequence >= sequence:
        return
    path = floor_file(key_id)
    try:
        write_json_atomic(path, {"key_id": key_id, "sequence": sequence, "issued": issued,
                                 "seen": stamp(utc(now)), "source": source})
    except OSError as e:
        raise ConfigError(f"cannot record revocation list sequence {sequence} in {path}: "
                          f"{e.strerror}", "Make EDGETUNE_HOME (default ~/.edgetune) "
                          "writable: it remembers the newest list so an older one is refused."
                          ) from None
