"""DSSE envelopes signed with the creator's bundle key: seal a payload, open and verify one.

DSSE v1 (github.com/secure-systems-lab/dsse): the signature covers PAE(type, payload), so
the payload type is signed too and a licence cannot be passed off as a revocation list.
Written by hand because it is 3 lines and the only Python DSSE code (securesystemslib,
sigstore) brings Sigstore-specific key and bundle types that ports to phones would not have.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from edgetune import keys, strict_json
from edgetune.errors import VerificationError
from edgetune.licences.formats import ASK_CREATOR, EXIT_BAD_SIGNATURE, EXIT_MALFORMED


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def seal(payload_type: str, payload: dict, key: Any, key_id: str) -> dict:
    """``payload`` as a DSSE envelope (a dict) with one ECDSA P-256 signature by ``key``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    body = json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    sig = key.sign(pae(payload_type, body), ec.ECDSA(hashes.SHA256()))  # DER-encoded
    return {"payloadType": payload_type, "payload": base64.b64encode(body).decode("ascii"),
            "signatures": [{"keyid": key_id, "sig": base64.b64encode(sig).decode("ascii")}]}


_KINDS = {"licence": strict_json.LICENCE, "revocation list": strict_json.REVOCATIONS}


def malformed(path: Path, why: str, what: str = "licence") -> VerificationError:
    return VerificationError(f"{path}: malformed {what} ({why})", ASK_CREATOR,
                             path=str(path), exit_code=EXIT_MALFORMED)


def open_envelope(path: Path, payload_type: str, public_key: Any, what: str) -> dict:
    """Read a DSSE envelope, check its one signature against ``public_key``, return the payload."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    path, kind = Path(path), _KINDS[what]
    try:
        env = strict_json.loads(strict_json.read_bytes(path, kind), kind)
    except FileNotFoundError:
        raise malformed(path, "file not found", what) from None
    except OSError as e:
        raise malformed(path, f"cannot read: {e.strerror}", what) from None
    except strict_json.JsonRejected as e:
        raise malformed(path, str(e), what) from None
    sigs = env.get("signatures") if isinstance(env, dict) else None
    if not (isinstance(sigs, list) and len(sigs) == 1 and isinstance(sigs[0], dict)
            and isinstance(sigs[0].get("sig"), str) and isinstance(env.get("payload"), str)):
        raise malformed(path, "not a DSSE envelope with one signature", what)
    if env.get("payloadType") != payload_type:
        raise malformed(path, f"payloadType is not {payload_type}", what)
    try:
        body = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(sigs[0]["sig"], validate=True)
    except ValueError:
        raise malformed(path, "bad base64", what) from None
    try:
        public_key.verify(sig, pae(payload_type, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(
            f"{path}: the {what} signature does not match the creator's public key",
            "Check that you have the right creator key; otherwise the file was altered or "
            "signed by someone else.", path=str(path), exit_code=EXIT_BAD_SIGNATURE) from None
    try:  # signed, and still read strictly: an app must see the fields we saw
        payload = strict_json.loads(body, kind)
    except strict_json.JsonRejected as e:
        raise malformed(path, f"payload: {e}", what) from None
    if not isinstance(payload, dict):
        raise malformed(path, "payload is not a JSON object", what)
    return payload


def signing_key(path: Path, passphrase: str | None) -> tuple[Any, str]:
    """Load the creator's private key once; return it with its key id."""
    key = keys.load_private_key(Path(path), passphrase)  # KeyFileErrors that never echo secrets
    return key, keys.key_id(key.public_key())


def verifying_key(path: Path) -> tuple[Any, str]:
    """The creator's public key and its key id."""
    key = keys.load_public_key(Path(path))  # KeyFileError (exit 1) when unusable
    return key, keys.key_id(key)


def verify_bundle_with(bundle: Path, key: Any) -> None:
    """Verify ``bundle`` with the public half of ``key`` (VerificationError, exit 2-11)."""
    import tempfile

    from cryptography.hazmat.primitives import serialization

    from edgetune.bundle import verify_bundle

    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    with tempfile.TemporaryDirectory(prefix="edgetune-licence-") as tmp:
        public_key = Path(tmp) / "creator.pub"
        public_key.write_bytes(pem)
        verify_bundle(bundle, public_key)
