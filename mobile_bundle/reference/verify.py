#!/usr/bin/env python3
"""Reference verifier for edgetune bundles, licences and revocation lists.

    python verify.py BUNDLE_DIR --key creator.pub [--licence FILE] [--revocations FILE]

Uses only the standard library and `cryptography`, so each step ports directly to Kotlin
(java.security "SHA256withECDSA") or Swift (CryptoKit P256.Signing). Steps and exit codes
follow mobile_bundle/SPEC.md (bundle and licences): the first failure prints one line naming
the offending file and exits with its code; 0 means verified.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import stat
import sys
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE, MANIFEST = "model.sig", "edgetune.json"
INTOTO = "application/vnd.in-toto+json"
STATEMENT = "https://in-toto.io/Statement/v1"
PREDICATE = "https://model_signing/signature/v1.0"
LICENCE = "application/vnd.edgetune.licence+json"
REVOCATIONS = "application/vnd.edgetune.revocations+json"
HEX64, LICENCE_ID = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{32}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
CHUNK = 1 << 20  # hash in 1 MiB pieces: GGUFs are gigabytes and phones have little RAM
# SPEC.md "JSON limits": bytes per kind, nesting depth, characters per number
MANIFEST_MAX, LICENCE_MAX, REVOCATIONS_MAX = 1 << 20, 64 << 10, 16 << 20
MAX_DEPTH, MAX_NUMBER = 64, 64
# Printed names come from the bundle: control and bidi characters (and new lines: the result
# is one line) are shown escaped, so a file name cannot rewrite the line (SPEC.md).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                    "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


class Fail(Exception):
    def __init__(self, code, path, why):
        super().__init__(f"{path}: {why}")
        self.code = code


def need(ok):
    if not ok:  # not `assert`: Python drops asserts under -O, and these are security checks
        raise ValueError


def printable(text):
    named = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
    return UNSAFE.sub(lambda m: named.get(m.group()) or f"\\u{ord(m.group()):04x}", str(text))


def _pairs(pairs):
    need(len({k for k, _ in pairs}) == len(pairs))  # a duplicate key: refuse, never pick one
    return dict(pairs)


def _number(kind):
    def parse(literal):
        need(len(literal) <= MAX_NUMBER)
        value = kind(literal)
        need(value not in (float("inf"), float("-inf")))
        return value
    return parse


def _constant(name):
    raise ValueError  # NaN, Infinity: not JSON


def strict_json(data, limit):
    """Parse UTF-8 JSON bytes under SPEC.md's limits; ValueError for anything else.

    Duplicate keys, more than `limit` bytes, nesting deeper than MAX_DEPTH, a number literal
    longer than MAX_NUMBER characters or non-finite, NaN/Infinity, and lone surrogates are
    all refused, so that every app reads a signed document the same way."""
    need(len(data) <= limit)
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs,
                           parse_int=_number(int), parse_float=_number(float),
                           parse_constant=_constant)
    except RecursionError:  # deeper than Python's own limit
        raise ValueError from None
    level = [value]
    for _depth in range(MAX_DEPTH):  # then `level` holds the values at depth MAX_DEPTH + 1
        level = [c for v in level if isinstance(v, (dict, list))
                 for c in (v.values() if isinstance(v, dict) else v)]
    need(not any(isinstance(v, (dict, list)) for v in level))
    need(not re.search("[\ud800-\udfff]", json.dumps(value, ensure_ascii=False)))
    return value


def read_limited(path, limit):
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # never more than the limit in memory
    need(len(data) <= limit)
    return data


def pae(payload_type, payload):
    # DSSE v1 pre-authentication encoding: the signature covers the payload type as well as
    # the exact payload bytes, so a payload cannot be replayed as another type.
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def open_envelope(env, payload_type, key, path, bad_sig, malformed):
    """Check a DSSE envelope's one ECDSA P-256/SHA-256 signature; return the payload bytes."""
    try:
        need(env["payloadType"] == payload_type and len(env["signatures"]) == 1)
        payload = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(env["signatures"][0]["sig"], validate=True)  # DER (r, s)
    except Exception:
        raise Fail(malformed, path, f"not a DSSE envelope of type {payload_type}")
    try:
        key.verify(sig, pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Fail(bad_sig, path, "signature does not verify with the creator's key")
    return payload


def load_key(path):
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_public_key(f.read())
        need(isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1")
    except Exception:
        raise Fail(1, path, "not a readable ECDSA P-256 public key (PEM)")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, hashlib.sha256(der).hexdigest()  # key id: sha256 of DER SubjectPublicKeyInfo


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):  # streamed: never a whole file in memory
            h.update(chunk)
    return h.hexdigest()


def list_files(root):
    # Links and special files are refused: through a link the verifier could hash one file
    # while the app loads another.
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for entry in sorted(dirs) + sorted(names):
            full = os.path.join(folder, entry)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise Fail(8, rel, "symbolic link or special file in the bundle")
            if stat.S_ISREG(mode):
                files.append(rel)
    return sorted(files)


def verify_signature(root, key):
    """Check model.sig and every byte of the bundle; return {path: signed sha256}."""
    sig_path = os.path.join(root, SIGNATURE)
    if not os.path.lexists(sig_path):
        raise Fail(3, SIGNATURE, "the bundle is not signed")
    present = [f for f in list_files(root) if f != SIGNATURE]  # links first (8)
    try:  # a Sigstore bundle; offline, only its DSSE envelope matters (no certificate, no log)
        with open(sig_path, "rb") as f:
            env = json.load(f)["dsseEnvelope"]
    except Exception:
        raise Fail(4, SIGNATURE, "not a Sigstore bundle with a DSSE envelope")
    statement = open_envelope(env, INTOTO, key, SIGNATURE, 4, 4)
    try:  # an in-toto statement whose predicate lists each file's sha256 (method "files")
        st = json.loads(statement)
        pred, signed = st["predicate"], {}
        need(st["_type"] == STATEMENT and st["predicateType"] == PREDICATE)
        need(pred["serialization"]["method"] == "files")
        need(pred["serialization"]["hash_type"] == "sha256")
        for r in pred["resources"]:
            need(r["algorithm"] == "sha256" and isinstance(r["name"], str))
            need(HEX64.fullmatch(r["digest"]) and r["name"] not in signed)
            signed[r["name"]] = r["digest"]
        # the one subject's digest is sha256 over the resources' raw digests, in order
        joined = b"".join(bytes.fromhex(r["digest"]) for r in pred["resources"])
        need(len(st["subject"]) == 1)
        need(st["subject"][0]["digest"]["sha256"] == hashlib.sha256(joined).hexdigest())
    except Exception:
        raise Fail(4, SIGNATURE, "signed statement is not a model-signing v1.0 file list")
    missing = sorted(set(signed) - set(present))
    added = sorted(set(present) - set(signed))
    if missing:
        renamed = f" (unsigned {added[0]} found: renamed?)" if added else ""
        raise Fail(7, missing[0], "signed file is missing" + renamed)
    if added:
        raise Fail(6, added[0], "file is not covered by the signature")
    for rel in present:
        if sha256_file(os.path.join(root, rel)) != signed[rel]:
            raise Fail(5, rel, "content does not match its signed hash")
    return signed


def escapes(root, rel):
    """True when an artifact path is absolute or would leave the bundle folder."""
    if "\0" in rel:  # not a path at all: the field check reports it (9)
        return False
    if rel.startswith("/") or "\\" in rel or ".." in rel.split("/") or re.match("[A-Za-z]:", rel):
        return True
    return os.path.commonpath([os.path.realpath(os.path.join(root, rel)), root]) != root


def verify_manifest(root, signed, key_id):
    """The manifest's artifacts must be exactly the signed GGUFs, with the signed digests."""
    if MANIFEST not in signed:
        raise Fail(9, MANIFEST, "the manifest is missing")
    try:
        m = strict_json(read_limited(os.path.join(root, MANIFEST), MANIFEST_MAX), MANIFEST_MAX)
    except Exception:
        raise Fail(9, MANIFEST, "not valid JSON, or beyond the JSON limits")
    arts = m.get("artifacts") if isinstance(m, dict) else None
    for a in arts if isinstance(arts, list) else []:
        if isinstance(a, dict) and isinstance(a.get("path"), str) and escapes(root, a["path"]):
            raise Fail(10, a["path"], "artifact path leaves the bundle")
    try:  # only the fields used here; the full schema is mobile_bundle/edgetune.schema.json
        need(m["schema_version"] == "1.0" and isinstance(m["bundle_id"], str))
        need(isinstance(m["version"], str) and HEX64.fullmatch(m["creator"]["key_id"]))
        need(isinstance(arts, list) and arts)
        for a in arts:
            need(not re.search(r"[\x00-\x1f]", a["path"]))
            need(all(part not in ("", ".") for part in a["path"].split("/")))
            need(HEX64.fullmatch(a["sha256"]) and type(a["size"]) is int and a["size"] >= 0)
    except Exception:
        raise Fail(9, MANIFEST, "missing or invalid field (see edgetune.schema.json)")
    if m["creator"]["key_id"] != key_id:
        raise Fail(4, MANIFEST, "creator.key_id names another key than the one given")
    seen = set()
    for a in arts:
        rel = a["path"]
        if rel in seen:
            raise Fail(11, rel, "listed twice in the manifest")
        seen.add(rel)
        if rel not in signed:
            raise Fail(11, rel, "listed in the manifest but not in the bundle")
        if a["sha256"] != signed[rel]:
            raise Fail(11, rel, "manifest sha256 differs from the signed digest")
        if a["size"] != os.stat(os.path.join(root, rel)).st_size:
            raise Fail(11, rel, "manifest size differs from the file")
    for rel in sorted(signed):
        if rel.lower().endswith(".gguf") and rel not in seen:
            raise Fail(11, rel, "GGUF file is not listed in the manifest")
    return m


def read_signed(path, payload_type, key, fields, optional=(), limit=LICENCE_MAX):
    """A licence or revocation list: a JSON object in a DSSE envelope signed by the creator."""
    try:
        env = strict_json(read_limited(path, limit), limit)
    except Exception:
        raise Fail(16, path, "missing, unreadable, not JSON, or beyond the JSON limits")
    payload = open_envelope(env, payload_type, key, path, 12, 16)
    try:
        data = strict_json(payload, limit)
        need(set(fields) <= set(data) <= set(fields) | set(optional))  # unknown keys: refuse
        return data
    except Exception:
        raise Fail(16, path, "malformed: wrong or missing fields")


def load_revocations(path, key, key_id):
    r = read_signed(path, REVOCATIONS, key,
                    ("revocations_version", "sequence", "issued", "key_id", "revoked"),
                    limit=REVOCATIONS_MAX)
    try:  # apps should also keep the highest `sequence` seen and refuse an older list
        need(r["revocations_version"] == "1.0" and STAMP.fullmatch(r["issued"]))
        need(type(r["sequence"]) is int and r["sequence"] >= 1 and HEX64.fullmatch(r["key_id"]))
        for e in r["revoked"]:
            need(set(e) == {"licence_id", "bundle_id", "revoked"})
            need(LICENCE_ID.fullmatch(e["licence_id"]) and isinstance(e["bundle_id"], str))
            need(STAMP.fullmatch(e["revoked"]))
    except Exception:
        raise Fail(16, path, "malformed revocation list")
    if r["key_id"] != key_id:
        raise Fail(12, path, "revocation list names another creator key")
    return {e["licence_id"] for e in r["revoked"]}


def expiry(text):
    """First instant (UTC) at which a licence is no longer valid; a date lasts all that day."""
    if DATE.fullmatch(text):
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return day + timedelta(days=1)
    need(STAMP.fullmatch(text))
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def verify_licence(path, key, key_id, manifest, revoked, now):
    lic = read_signed(path, LICENCE, key, ("licence_version", "licence_id", "bundle_id",
                      "bundle_version", "follower", "issued", "key_id"), ("expires", "devices"))
    try:
        need(lic["licence_version"] == "1.0" and LICENCE_ID.fullmatch(lic["licence_id"]))
        need(HEX64.fullmatch(lic["key_id"]) and STAMP.fullmatch(lic["issued"]))
        for field in ("bundle_id", "bundle_version", "follower"):
            need(isinstance(lic[field], str) and lic[field])
        need("devices" not in lic or (type(lic["devices"]) is int and lic["devices"] >= 1))
        until = expiry(lic["expires"]) if "expires" in lic else None
    except Exception:
        raise Fail(16, path, "malformed licence")
    if lic["key_id"] != key_id:
        raise Fail(12, path, "licence names another creator key")
    if (lic["bundle_id"], lic["bundle_version"]) != (manifest["bundle_id"], manifest["version"]):
        raise Fail(14, path, f"licence is for {lic['bundle_id']} {lic['bundle_version']}, "
                             f"not {manifest['bundle_id']} {manifest['version']}")
    if lic["licence_id"] in revoked:
        raise Fail(15, path, f"licence {lic['licence_id']} has been revoked")
    if until is not None and now >= until:  # devices is informational: not checkable offline
        raise Fail(13, path, f"licence expired ({lic['expires']})")
    return lic


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify an edgetune bundle offline.")
    parser.error = lambda msg: sys.exit(print(f"error 1: {msg}", file=sys.stderr) or 1)
    parser.add_argument("bundle")
    parser.add_argument("--key", required=True, help="the creator's public key (PEM)")
    parser.add_argument("--licence", help="a follower's .licence.json")
    parser.add_argument("--revocations", help="the creator's signed revocation list")
    args = parser.parse_args(argv)
    try:
        key, key_id = load_key(args.key)
        if not os.path.isdir(args.bundle):
            raise Fail(2, args.bundle, "bundle folder not found")
        root = os.path.realpath(args.bundle)
        signed = verify_signature(root, key)
        manifest = verify_manifest(root, signed, key_id)
        revoked = load_revocations(args.revocations, key, key_id) if args.revocations else set()
        note = ""
        if args.licence:
            lic = verify_licence(args.licence, key, key_id, manifest, revoked,
                                 datetime.now(timezone.utc))
            note = f"; licence {lic['licence_id']} for {lic['follower']}"
    except Fail as e:
        print(printable(f"error {e.code}: {e}"), file=sys.stderr)
        return e.code
    except OSError as e:  # a file became unreadable while hashing
        print(printable(f"error 2: {e.filename}: {e.strerror}"), file=sys.stderr)
        return 2
    print(printable(f"OK {manifest['bundle_id']} {manifest['version']}: {len(signed)} signed "
                    f"files{note}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
