"""Revocation lists: a DSSE envelope listing revoked licence ids, signed with the creator's
bundle key, whose ``sequence`` grows on every change so that apps can refuse an older list.
Format: ``mobile_bundle/SPEC.md`` ("Licences").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edgetune.artifacts import write_bytes_atomic
from edgetune.errors import ConfigError, VerificationError
from edgetune.licences.dsse import malformed, open_envelope, seal, signing_key, verifying_key
from edgetune.licences.floor import SeenList, remember, seen_list
from edgetune.licences.formats import (
    ASK_CREATOR,
    BUNDLE_ID_PATTERN,
    EXIT_BAD_SIGNATURE,
    EXIT_MALFORMED,
    HEX64_PATTERN,
    LICENCE_ID_PATTERN,
    STAMP_PATTERN,
    stamp,
    utc,
)

REVOCATIONS_TYPE = "application/vnd.edgetune.revocations+json"
REVOCATIONS_VERSION = "1.0"


@dataclass(frozen=True)
class Revocation:
    licence_id: str
    bundle_id: str
    revoked: str  # RFC 3339 UTC stamp


@dataclass(frozen=True)
class RevocationList:
    sequence: int  # grows by one on every change: apps refuse a list older than one seen
    issued: str
    key_id: str
    entries: tuple[Revocation, ...]

    def is_revoked(self, licence_id: str) -> bool:
        return any(e.licence_id == licence_id for e in self.entries)


def _revocation_problem(p: dict) -> str | None:
    entries = p.get("revoked")
    checks = [
        (set(p) == {"revocations_version", "sequence", "issued", "key_id", "revoked"},
         "fields are not revocations_version, sequence, issued, key_id, revoked"),
        (p.get("revocations_version") == REVOCATIONS_VERSION, "revocations_version is not 1.0"),
        (type(p.get("sequence")) is int and p["sequence"] >= 1, "bad sequence"),
        (STAMP_PATTERN.fullmatch(str(p.get("issued"))), "bad issued"),
        (HEX64_PATTERN.fullmatch(str(p.get("key_id"))), "bad key_id"),
        (isinstance(entries, list) and all(
            isinstance(e, dict) and set(e) == {"licence_id", "bundle_id", "revoked"}
            and LICENCE_ID_PATTERN.fullmatch(str(e["licence_id"]))
            and isinstance(e["bundle_id"], str)
            and STAMP_PATTERN.fullmatch(str(e["revoked"])) for e in entries),
         "bad revoked entry"),
    ]
    return next((why for ok, why in checks if not ok), None)


def open_revocations(path: Path, public_key: Any, key_id: str,
                     min_sequence: int | None) -> RevocationList:
    """``load_revocations`` with the creator's public key already loaded."""
    p = open_envelope(path, REVOCATIONS_TYPE, public_key, "revocation list")
    if why := _revocation_problem(p):
        raise malformed(path, why, "revocation list")
    if p["key_id"] != key_id:
        raise VerificationError(f"{path}: revocation list names creator key {p['key_id']}",
                                ASK_CREATOR, path=str(path), exit_code=EXIT_BAD_SIGNATURE)
    if min_sequence is not None and p["sequence"] < min_sequence:
        raise malformed(path, f"sequence {p['sequence']} is older than {min_sequence}, "
                        "already seen", "revocation list")
    entries = tuple(Revocation(e["licence_id"], e["bundle_id"], e["revoked"])
                    for e in p["revoked"])
    return RevocationList(p["sequence"], p["issued"], p["key_id"], entries)


def load_revocations(path: Path, public_key_path: Path, *,
                     min_sequence: int | None = None) -> RevocationList:
    """Load a revocation list signed with the creator's key (12 other key, 16 malformed).

    Apps should pass the highest ``sequence`` they have seen as ``min_sequence``, so that an
    older list (from which a revocation was "removed") is refused.
    """
    public_key, key_id = verifying_key(public_key_path)
    return open_revocations(Path(path), public_key, key_id, min_sequence)


def revoke(private_key: Path, passphrase: str | None, revocations_path: Path, *,
           licence_ids: Iterable[str], bundle_id: str,
           now: datetime | None = None) -> RevocationList:
    """Add licence ids to the revocation list (created if absent), bump its sequence, re-sign.

    The existing list must verify with this key. Ids already revoked are kept as they are;
    when nothing is new the file is left untouched.
    """
    key, key_id = signing_key(Path(private_key), passphrase)
    path, moment = Path(revocations_path), stamp(utc(now))
    ids: Sequence[str] = list(dict.fromkeys(licence_ids))
    bad = [i for i in ids if not isinstance(i, str) or not LICENCE_ID_PATTERN.fullmatch(i)]
    if bad or not ids:
        raise ConfigError(f"not a licence id: {bad[0]!r}" if bad else "no licence id given",
                          "A licence id is 32 lowercase hex characters (see the licence file).")
    if not BUNDLE_ID_PATTERN.fullmatch(bundle_id):
        raise ConfigError(f"not a bundle id: {bundle_id!r}", "Use the bundle's bundle_id.")
    old = (open_revocations(path, key.public_key(), key_id, None) if path.exists()
           else RevocationList(0, moment, key_id, ()))
    _refuse_a_fork(path, old, seen_list(key_id))
    new = [Revocation(i, bundle_id, moment) for i in ids if not old.is_revoked(i)]
    if not new:
        return old
    result = RevocationList(old.sequence + 1, moment, key_id, old.entries + tuple(new))
    payload = {"revocations_version": REVOCATIONS_VERSION, "sequence": result.sequence,
               "issued": moment, "key_id": key_id,
               "revoked": [{"licence_id": e.licence_id, "bundle_id": e.bundle_id,
                            "revoked": e.revoked} for e in result.entries]}
    envelope = seal(REVOCATIONS_TYPE, payload, key, key_id)
    write_bytes_atomic(path, (json.dumps(envelope, indent=2) + "\n").encode("utf-8"))
    remember(key_id, result.sequence, moment, str(path.resolve()), now)
    return result


def _refuse_a_fork(path: Path, old: RevocationList, seen: SeenList | None) -> None:
    """Extending a list older than one this machine signed or saw would sign a second list
    under a sequence apps may already hold, without the revocations made since."""
    if seen is None or old.sequence >= seen.sequence:
        return
    have = f"is sequence {old.sequence}" if old.sequence else "does not exist"
    raise ConfigError(f"{path} {have}, but this machine has {seen.describe()} of this "
                      "creator's revocation list",
                      f"Pass the newest list with --list (sequence {seen.sequence}); a new "
                      "sequence made from an older list would drop the revocations since.")


def newest_revocations(given: Path | None, public_key_path: Path, *,
                       carried: tuple[RevocationList, str] | None = None,
                       now: datetime | None = None) -> RevocationList | None:
    """The revocation list a licence check must use: ``given`` (a file), else ``carried`` (the
    list published with the bundle, and where from), never older than either ``carried`` or
    the newest this machine has seen (16), and never none once one was seen (16). Raises the
    machine's floor to the list used. None: no list given and none ever seen."""
    public_key, key_id = verifying_key(public_key_path)
    seen = seen_list(key_id)
    if given is None and carried is None:
        if seen is None:
            return None
        raise VerificationError(
            f"no revocation list given, but this machine has {seen.describe()} of this "
            "creator's list: without it a revoked licence would pass",
            f"Pass the creator's newest list with --revocations (sequence {seen.sequence} or "
            "later).", exit_code=EXIT_MALFORMED)
    lst = open_revocations(Path(given), public_key, key_id, None) if given else carried[0]
    where = str(given) if given else carried[1]
    if carried is not None and lst.sequence < carried[0].sequence:
        raise _older(where, lst.sequence, f"sequence {carried[0].sequence} in this bundle's "
                     f"repo ({carried[1]})", carried[0].sequence)
    if seen is not None and lst.sequence < seen.sequence:
        raise _older(where, lst.sequence, seen.describe(), seen.sequence)
    remember(key_id, lst.sequence, lst.issued,
             str(Path(given).resolve()) if given else carried[1], now)
    return lst


def _older(where: str, sequence: int, newer: str, minimum: int) -> VerificationError:
    return VerificationError(
        f"{where}: revocation list sequence {sequence} is older than {newer}: an older list "
        "can hide a revocation", f"Use the creator's newest revocation list (sequence "
        f"{minimum} or later).", path=where, exit_code=EXIT_MALFORMED)
