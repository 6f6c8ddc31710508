"""Per-follower licences: a DSSE envelope over a small JSON payload that binds one follower to
one ``bundle_id`` and exact ``version``, signed offline with the creator's bundle key (the same
ECDSA P-256 key as ``model.sig``), so an app that holds ``creator.pub`` can check it offline.
Format and exit codes (12-16, after the bundle's 2-11): ``mobile_bundle/SPEC.md`` ("Licences").
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from edgetune import keys, strict_json
from edgetune.artifacts import atomic_file
from edgetune.errors import ConfigError, DataError, OutputExistsError, VerificationError
from edgetune.licences.dsse import (malformed, open_envelope, seal, signing_key,
                                    verify_bundle_with, verifying_key)
from edgetune.licences.formats import (
    ASK_CREATOR,
    BUNDLE_ID_PATTERN,
    EXIT_BAD_SIGNATURE,
    EXIT_EXPIRED,
    EXIT_OTHER_BUNDLE,
    EXIT_REVOKED,
    HEX64_PATTERN,
    LICENCE_ID_PATTERN,
    STAMP_PATTERN,
    stamp,
    utc,
)
from edgetune.licences.revocations import RevocationList, open_revocations

LICENCE_TYPE = "application/vnd.edgetune.licence+json"
LICENCE_VERSION = "1.0"
LICENCE_SUFFIX = ".licence.json"

_SEMVER = re.compile(  # the manifest schema's semver 2.0 pattern
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FOLLOWER_MAX = 256
_LICENCE_KEYS = {"licence_version", "licence_id", "bundle_id", "bundle_version", "follower",
                 "issued", "expires", "devices", "key_id"}
_LICENCE_OPTIONAL = {"expires", "devices"}
_CSV_COLUMNS = ("follower", "expires", "devices")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


@dataclass(frozen=True)
class LicenceInfo:
    """A licence whose signature checked out (and, from verify_licence, its binding too)."""

    licence_id: str
    bundle_id: str
    bundle_version: str
    follower: str
    issued: str
    expires: str | None  # as stored: "YYYY-MM-DD" (valid through that UTC day) or a UTC stamp
    expires_at: datetime | None  # first instant at which the licence is no longer valid
    devices: int | None  # informational only: offline verification cannot count devices
    key_id: str


# --- expiry --------------------------------------------------------------------------------------

def _expiry(value: str | date | datetime) -> tuple[str, datetime]:
    """Normalise an expiry to its stored form and the first instant it no longer holds.

    A date means the end of that day in UTC; a date-time needs an explicit offset (a naive
    time would mean a different instant in every time zone) and is stored in UTC.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a date-time needs a time zone, e.g. 2026-12-31T18:00:00Z")
        moment = value.astimezone(timezone.utc).replace(microsecond=0)
        return stamp(moment), moment
    if isinstance(value, date):
        return value.isoformat(), datetime.combine(value + timedelta(days=1), time(),
                                                   timezone.utc)
    text = str(value).strip()
    if _DATE.fullmatch(text):
        return _expiry(date.fromisoformat(text))
    if _RFC3339.fullmatch(text):
        return _expiry(datetime.fromisoformat(text.upper().replace(" ", "T")
                                              .replace("Z", "+00:00")))
    raise ValueError("not an RFC 3339 date (2026-12-31) or date-time (2026-12-31T18:00:00Z)")


# --- issuing ------------------------------------------------------------------------------------

def _licence_payload(*, key_id: str, bundle_id: str, bundle_version: str, follower: str,
                     expires: Any, devices: Any, now: datetime) -> dict:
    """Validated payload; ValueError names the first bad field (``field: reason``)."""
    follower = follower.strip() if isinstance(follower, str) else follower
    if not isinstance(follower, str) or not follower:
        raise ValueError("follower: must be a non-empty string")
    if len(follower) > _FOLLOWER_MAX or _CONTROL.search(follower):
        raise ValueError(f"follower: at most {_FOLLOWER_MAX} characters, no control characters")
    if not isinstance(bundle_id, str) or not BUNDLE_ID_PATTERN.fullmatch(bundle_id):
        raise ValueError(f"bundle_id: {bundle_id!r} is not a bundle id (lowercase letters, "
                         "digits and '-', 2-64 characters)")
    if not isinstance(bundle_version, str) or not _SEMVER.fullmatch(bundle_version):
        raise ValueError(f"bundle_version: {bundle_version!r} is not a semver version")
    payload = {"licence_version": LICENCE_VERSION, "licence_id": secrets.token_hex(16),
               "bundle_id": bundle_id, "bundle_version": bundle_version, "follower": follower,
               "issued": stamp(now), "key_id": key_id}
    if expires not in (None, ""):
        try:
            payload["expires"], until = _expiry(expires)
        except ValueError as e:
            raise ValueError(f"expires: {expires!r}: {e}") from None
        if until <= now:
            raise ValueError(f"expires: {payload['expires']} is already past")
    if devices not in (None, ""):
        try:
            count = int(str(devices).strip()) if not isinstance(devices, bool) else 0
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"devices: {devices!r} is not a whole number >= 1")
        payload["devices"] = count
    return payload


def issue_licence(private_key: Path, passphrase: str | None, *, bundle_id: str,
                  bundle_version: str, follower: str, expires: str | date | None = None,
                  devices: int | None = None, now: datetime | None = None) -> dict:
    """Return a signed licence (a DSSE envelope as a dict; write it with write_licence)."""
    key, key_id = signing_key(Path(private_key), passphrase)
    try:
        payload = _licence_payload(key_id=key_id, bundle_id=bundle_id,
                                   bundle_version=bundle_version, follower=follower,
                                   expires=expires, devices=devices, now=utc(now))
    except ValueError as e:
        raise ConfigError(f"cannot issue licence: {e}",
                          "See mobile_bundle/SPEC.md (Licences).") from None
    return seal(LICENCE_TYPE, payload, key, key_id)


def issue_for_bundle(private_key: Path, passphrase: str | None, bundle: Path, *, follower: str,
                     expires: str | date | None = None, devices: int | None = None,
                     now: datetime | None = None) -> dict:
    """Like ``issue_licence``, bound to the bundle folder (or edgetune.json) signed by this key."""
    key, key_id = signing_key(Path(private_key), passphrase)
    bundle_id, version = _bundle_ids(Path(bundle), key)
    try:
        payload = _licence_payload(key_id=key_id, bundle_id=bundle_id, bundle_version=version,
                                   follower=follower, expires=expires, devices=devices,
                                   now=utc(now))
    except ValueError as e:
        raise ConfigError(f"cannot issue licence: {e}",
                          "See mobile_bundle/SPEC.md (Licences).") from None
    return seal(LICENCE_TYPE, payload, key, key_id)


def write_licence(licence: dict, path: Path) -> Path:
    """Write one licence file; refuses to overwrite."""
    path = Path(path)
    try:
        with atomic_file(path, overwrite=False) as tmp:
            _write_envelope(tmp, licence)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists",
                                "Pick another file name; licences are never overwritten.") from None
    return path


def _write_envelope(path: Path, envelope: dict) -> None:
    path.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")


def licence_id_of(path: Path) -> str:
    """The licence id written in a licence file, WITHOUT checking its signature.

    For the creator revoking their own licences; never use it to trust a licence.
    """
    try:
        envelope = strict_json.loads(strict_json.read_bytes(Path(path), strict_json.LICENCE),
                                     strict_json.LICENCE)
        payload = strict_json.loads(base64.b64decode(envelope["payload"], validate=True),
                                    strict_json.LICENCE)
        licence_id = payload["licence_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a licence file ({e})",
                          "Pass licence files written by `edgetune license issue`.") from None
    if not isinstance(licence_id, str) or not LICENCE_ID_PATTERN.fullmatch(licence_id):
        raise ConfigError(f"{path}: not a licence file (bad licence_id)",
                          "Pass licence files written by `edgetune license issue`.")
    return licence_id


def safe_file_stem(follower: str) -> str:
    """A portable file name stem for ``follower`` (letters, digits, ``._@+-``)."""
    stem = re.sub(r"[^A-Za-z0-9._@+-]+", "_", follower).strip("._-")[:100] or "follower"
    return f"_{stem}" if stem.split(".")[0].upper() in _WINDOWS_RESERVED else stem


def _bundle_ids(source: Path | tuple[str, str], key: Any) -> tuple[str, str]:
    """``(bundle_id, version)``: given, or from a bundle signed with ``key`` that verifies (a
    licence for a manifest altered after signing would bind the follower to other ids than
    the ones apps verify)."""
    if isinstance(source, (tuple, list)):
        return source[0], source[1]
    manifest_path = Path(source) / "edgetune.json" if Path(source).is_dir() else Path(source)
    hint = "Pass the bundle folder or its edgetune.json."
    manifest = strict_json.read(manifest_path, strict_json.MANIFEST, error=ConfigError, hint=hint)
    try:
        ids = manifest["bundle_id"], manifest["version"], manifest["creator"]["key_id"]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"cannot read bundle_id and version from {manifest_path}: {e}",
                          hint) from None
    key_id = keys.key_id(key.public_key())
    if ids[2] != key_id:
        raise ConfigError(f"{manifest_path} names creator key {ids[2]}, not this key ({key_id})",
                          "Issue licences with the key that signed the bundle.")
    verify_bundle_with(manifest_path.parent, key)
    return ids[0], ids[1]


def issue_from_csv(private_key: Path, passphrase: str | None,
                   bundle_manifest_or_ids: Path | tuple[str, str], csv_path: Path,
                   out_dir: Path, *, now: datetime | None = None) -> list[Path]:
    """Issue one licence per CSV row into ``out_dir/<follower>.licence.json``.

    The CSV has a header row with ``follower`` and optionally ``expires`` and ``devices``.
    Every bad row is reported together, by row number and column, before anything is written;
    existing files are never overwritten. Returns the paths in row order.
    """
    key, key_id = signing_key(Path(private_key), passphrase)  # once, not per row
    bundle_id, version = _bundle_ids(bundle_manifest_or_ids, key)
    if not (isinstance(bundle_id, str) and BUNDLE_ID_PATTERN.fullmatch(bundle_id)
            and isinstance(version, str) and _SEMVER.fullmatch(version)):
        raise ConfigError(f"not a bundle id and semver version: {bundle_id!r} {version!r}",
                          "Pass the bundle folder, or its bundle_id and version.")
    csv_path, out_dir, moment = Path(csv_path), Path(out_dir), utc(now)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip().lower() for c in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {csv_path}: {e}", "Save the list as UTF-8 CSV.") from None
    hint = "The CSV needs a header row: follower[,expires][,devices]."
    if "follower" not in header or len(set(header)) != len(header) \
            or not set(header) <= set(_CSV_COLUMNS):
        raise DataError(f"{csv_path}: header {','.join(header) or '(none)'} is not "
                        "follower[,expires][,devices]", hint)
    if not rows:
        raise DataError(f"{csv_path}: no followers listed", hint)
    errors: list[str] = []
    planned: list[tuple[Path, dict]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if None in row:
            errors.append(f"row {line}: more cells than header columns")
            continue
        cells = {c: (row.get(c) or "").strip() for c in _CSV_COLUMNS}
        try:
            payload = _licence_payload(key_id=key_id, bundle_id=bundle_id,
                                       bundle_version=version, follower=cells["follower"],
                                       expires=cells["expires"], devices=cells["devices"],
                                       now=moment)
        except ValueError as e:
            errors.append(f"row {line}, column {e}")
            continue
        name = safe_file_stem(payload["follower"]) + LICENCE_SUFFIX
        if name.lower() in seen:  # also catches followers that differ only in odd characters
            errors.append(f"row {line}, column follower: {payload['follower']!r} duplicates "
                          f"row {seen[name.lower()]} (both would be {name})")
            continue
        seen[name.lower()] = line
        planned.append((out_dir / name, payload))
    if errors:
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise DataError(f"{csv_path}: " + "; ".join(errors[:20]) + more,
                        "Fix these rows; no licence was written.")
    existing = [p.name for p, _ in planned if os.path.lexists(p)]
    if existing:
        raise OutputExistsError(f"{out_dir}: {len(existing)} licence file(s) already exist, "
                                f"e.g. {existing[0]}", "Use a new output folder or remove "
                                "those rows; licences are never overwritten.")
    out_dir.mkdir(parents=True, exist_ok=True)
    # One os.sync() for the batch instead of 1,000 fsyncs (3.5 s on an SSD): stage every
    # file, flush them all, then publish the names (each atomic_file publishes its name when
    # the stack unwinds, after the sync).
    batch_sync = hasattr(os, "sync")
    written: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:
            for path, payload in planned:
                stack.push(_note_published(path, written))  # runs after that file's publish
                tmp = stack.enter_context(atomic_file(path, sync=not batch_sync,
                                                      overwrite=False))
                _write_envelope(tmp, seal(LICENCE_TYPE, payload, key, key_id))
            if batch_sync:
                os.sync()
    except BaseException:  # all or nothing: remove what this run wrote
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return [path for path, _payload in planned]


def _note_published(path: Path, written: list[Path]) -> Any:
    """An exit callback that adds ``path`` to ``written`` when its file was published."""
    def note(exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            written.append(path)
        return False  # never swallow the error

    return note


# --- verifying ----------------------------------------------------------------------------------

def _licence_problem(p: dict) -> str | None:
    missing = sorted(_LICENCE_KEYS - _LICENCE_OPTIONAL - p.keys())
    unknown = sorted(p.keys() - _LICENCE_KEYS)
    checks = [
        (not missing, f"missing {', '.join(missing)}"),
        (not unknown, f"unknown field {', '.join(unknown)}"),
        (p.get("licence_version") == LICENCE_VERSION, "licence_version is not 1.0"),
        (LICENCE_ID_PATTERN.fullmatch(str(p.get("licence_id"))), "bad licence_id"),
        (HEX64_PATTERN.fullmatch(str(p.get("key_id"))), "bad key_id"),
        (all(isinstance(p.get(k), str) and p[k] for k in ("bundle_id", "bundle_version",
                                                          "follower")), "empty field"),
        (STAMP_PATTERN.fullmatch(str(p.get("issued"))), "bad issued"),
        ("expires" not in p or _DATE.fullmatch(str(p["expires"]))
         or STAMP_PATTERN.fullmatch(str(p["expires"])), "bad expires"),
        ("devices" not in p or (type(p["devices"]) is int and p["devices"] >= 1), "bad devices"),
    ]
    return next((why for ok, why in checks if not ok), None)


def read_licence(licence_path: Path, public_key_path: Path) -> LicenceInfo:
    """Check a licence's format and signature only (no binding, expiry or revocation)."""
    public_key, key_id = verifying_key(public_key_path)
    return _read_licence(Path(licence_path), public_key, key_id)


def _read_licence(path: Path, public_key: Any, key_id: str) -> LicenceInfo:
    p = open_envelope(path, LICENCE_TYPE, public_key, "licence")
    if why := _licence_problem(p):
        raise malformed(path, why)
    try:
        expires, until = _expiry(p["expires"]) if "expires" in p else (None, None)
    except ValueError:  # e.g. 2026-02-30
        raise malformed(path, "bad expires") from None
    if p["key_id"] != key_id:
        raise VerificationError(f"{path}: licence names creator key {p['key_id']}, not this key",
                                ASK_CREATOR, path=str(path), exit_code=EXIT_BAD_SIGNATURE)
    return LicenceInfo(p["licence_id"], p["bundle_id"], p["bundle_version"], p["follower"],
                       p["issued"], expires, until, p.get("devices"), p["key_id"])


def verify_licence(licence_path: Path, public_key_path: Path, *, bundle_id: str,
                   bundle_version: str, now: datetime | None = None,
                   revocations: RevocationList | Path | None = None) -> LicenceInfo:
    """Check a licence for this exact bundle and version; raise VerificationError (12-16)."""
    path = Path(licence_path)
    public_key, key_id = verifying_key(public_key_path)
    if isinstance(revocations, (str, Path)):
        revocations = open_revocations(Path(revocations), public_key, key_id, None)
    elif revocations is not None and revocations.key_id != key_id:
        raise VerificationError("revocation list was signed by another key", ASK_CREATOR,
                                exit_code=EXIT_BAD_SIGNATURE)
    info = _read_licence(path, public_key, key_id)
    if (info.bundle_id, info.bundle_version) != (bundle_id, bundle_version):
        raise VerificationError(
            f"{path}: licence is for {info.bundle_id} {info.bundle_version}, not "
            f"{bundle_id} {bundle_version}", "Ask the creator for a licence for this release.",
            path=str(path), exit_code=EXIT_OTHER_BUNDLE)
    if revocations is not None and revocations.is_revoked(info.licence_id):
        raise VerificationError(f"{path}: licence {info.licence_id} has been revoked",
                                "Contact the creator.", path=str(path), exit_code=EXIT_REVOKED)
    if info.expires_at is not None and utc(now) >= info.expires_at:
        raise VerificationError(f"{path}: licence expired ({info.expires})",
                                "Ask the creator to renew it.", path=str(path),
                                exit_code=EXIT_EXPIRED)
    return info
