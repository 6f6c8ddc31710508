"""Sign and verify edgetune bundles with the OpenSSF ``model_signing`` library.

``model.sig`` is a Sigstore bundle written and checked by ``model_signing`` itself
(ECDSA P-256 key signing). It covers every file of the bundle except ``model.sig``,
so ``model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub)
.verify(bundle, bundle / "model.sig")`` accepts our bundles with no extra config.

Because that default verifier silently skips git metadata (``.git``, ``.github``,
``.gitattributes``, ``.gitignore`` at the top of the bundle), such paths can never
be covered compatibly: :func:`sign_bundle` refuses bundles holding them, and
:func:`verify_signature` reports them as unsigned (added) files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgetune.artifacts import write_bytes_atomic
from edgetune.errors import VerificationError
from edgetune.keys import load_private_key, load_public_key, passphrase_bytes

SIGNATURE_FILE = "model.sig"
_GIT_PATHS = (".git", ".github", ".gitattributes", ".gitignore")  # ignored by model_signing
_CHUNK = 1 << 20
_UNSIGNED_HINT = "Ask the creator for a signed bundle (edgetune build signs every bundle)."
_SIG_HINT = ("Check that you have the creator's public key; otherwise the bundle or its "
             "signature was altered after signing.")


def scan_files(bundle: Path) -> list[str]:
    """Relative POSIX paths of the bundle's files; refuses links and special files."""
    files: list[str] = []
    for root, dirs, names in os.walk(bundle, followlinks=False):
        for entry in sorted(dirs) + sorted(names):
            full = Path(root, entry)
            rel = full.relative_to(bundle).as_posix()
            if full.is_symlink():
                raise VerificationError(
                    f"{rel}: symbolic links are not allowed in a bundle",
                    "Replace the link with the real file, then sign again.",
                    path=rel, exit_code=8)
            if entry in names:
                if not full.is_file():
                    raise VerificationError(f"{rel}: not a regular file",
                                            "Remove it from the bundle.", path=rel, exit_code=8)
                files.append(rel)
    return sorted(files)


def _bundle_dir(bundle: Path) -> Path:
    bundle = Path(bundle).resolve()
    if not bundle.is_dir():
        raise VerificationError(f"bundle folder not found: {bundle}",
                                "Pass the folder that holds edgetune.json.")
    return bundle


def sign_bundle(bundle: Path, private_key: Path, passphrase: str | None = None) -> Path:
    """Sign every file of ``bundle`` into ``bundle/model.sig`` (atomically); return its path."""
    bundle = _bundle_dir(bundle)
    files = scan_files(bundle)
    for rel in files:
        top = rel.split("/", 1)[0]
        if top in _GIT_PATHS:
            raise VerificationError(
                f"{rel}: git metadata cannot be signed (model_signing verifiers skip it)",
                "Remove git files from the bundle folder, then sign again.", path=rel)
    load_private_key(Path(private_key), passphrase)

    from model_signing import hashing, signing

    hashing_cfg = hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE],
                                                     ignore_git_paths=False)
    config = signing.Config().set_hashing_config(hashing_cfg).use_elliptic_key_signer(
        private_key=Path(private_key), password=passphrase_bytes(passphrase))  # type: ignore[arg-type]
    target = bundle / SIGNATURE_FILE
    with tempfile.TemporaryDirectory(prefix="edgetune-sign-") as tmp:
        staged = Path(tmp) / SIGNATURE_FILE  # outside the bundle: never hashed
        config.sign(bundle, staged)
        write_bytes_atomic(target, staged.read_bytes())  # the scratch file appears after hashing
    return target


def _bad_signature(detail: str = "") -> VerificationError:
    msg = "model.sig: the signature does not match the public key"
    return VerificationError(msg + (f" ({detail})" if detail else ""), _SIG_HINT,
                             path=SIGNATURE_FILE, exit_code=4)


def signed_digests(bundle: Path) -> dict[str, str]:
    """Return ``{relative path: sha256 hex}`` as recorded in ``bundle/model.sig``.

    This only parses the file; it checks no signature. Trust the result only
    after :func:`verify_signature` succeeded (which returns the same mapping).
    """
    sig = Path(bundle) / SIGNATURE_FILE
    try:
        envelope = json.loads(sig.read_text(encoding="utf-8"))["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        if statement.get("predicateType") == "https://model_signing/Digests/v0.1":
            return {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        predicate = statement["predicate"]
        ser = predicate["serialization"]
        if ser.get("method") != "files" or ser.get("hash_type") != "sha256":
            raise _bad_signature(f"unsupported layout {ser.get('method')}/{ser.get('hash_type')}")
        return {r["name"]: r["digest"] for r in predicate["resources"]
                if r.get("algorithm") == "sha256"}
    except FileNotFoundError as e:
        raise VerificationError("model.sig: the bundle is not signed",
                                "Ask the creator for a signed bundle (edgetune build signs every bundle).",
                                path=SIGNATURE_FILE, exit_code=3) from e
    except VerificationError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _bad_signature("unreadable signature file") from e


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file (never read whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _diagnose(bundle: Path, present: list[str], signed: dict[str, str]) -> VerificationError:
    """Name the first file that differs from the (authentic) signed digests."""
    return _first_difference(bundle, present, signed) or VerificationError(
        "bundle content does not match its signature", "Re-download the bundle.", exit_code=5)


def _first_difference(bundle: Path, present: Sequence[str], signed: Mapping[str, str], *,
                      optional: Callable[[str], bool] = lambda _rel: False,
                      ) -> VerificationError | None:
    """The first file that differs from the (authentic) signed digests, or None.

    In order: a signed file that is missing and not ``optional`` (7), a file the signature does
    not cover (6), a file whose sha256 differs from its signed digest (5; each present file is
    hashed once, streamed)."""
    missing = sorted(rel for rel in set(signed) - set(present) if not optional(rel))
    added = sorted(set(present) - set(signed))
    if missing:
        extra = f" (unsigned {added[0]} found: renamed?)" if added else ""
        return VerificationError(f"{missing[0]}: signed file is missing{extra}",
                                 "Re-download the bundle; a file was removed or renamed.",
                                 path=missing[0], exit_code=7)
    if added:
        return VerificationError(f"{added[0]}: file is not covered by the signature",
                                 "Remove the extra file or ask the creator to re-sign.",
                                 path=added[0], exit_code=6)
    for rel in present:
        if sha256_file(bundle / rel) != signed[rel]:
            return VerificationError(f"{rel}: content does not match its signed hash",
                                     "Re-download the bundle; this file was altered.",
                                     path=rel, exit_code=5)
    return None


def verify_signature(bundle: Path, public_key: Path) -> dict[str, str]:
    """Verify ``bundle/model.sig`` against ``public_key``; return the signed digests."""
    bundle = _bundle_dir(bundle)
    sig = bundle / SIGNATURE_FILE
    if not os.path.lexists(sig):
        raise VerificationError("model.sig: the bundle is not signed",
                                "Ask the creator for a signed bundle (edgetune build signs every bundle).",
                                path=SIGNATURE_FILE, exit_code=3)
    present = [f for f in scan_files(bundle) if f != SIGNATURE_FILE]  # links first (exit 8)
    if not sig.is_file():
        raise _bad_signature("not a regular file")
    load_public_key(Path(public_key))

    from model_signing import verifying

    config = verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    try:
        config.verify(bundle, sig)
    except ValueError as e:
        if str(e).startswith("Cannot use '"):  # a file vanished or changed type meanwhile
            present = [f for f in scan_files(bundle) if f != SIGNATURE_FILE]
        elif not str(e).startswith("Signature mismatch"):
            raise _bad_signature() from e
        raise _diagnose(bundle, present, signed_digests(bundle)) from e
    except OSError as e:
        rel = Path(e.filename).resolve().relative_to(bundle).as_posix() \
            if e.filename and Path(e.filename).resolve().is_relative_to(bundle) else None
        raise VerificationError(f"{rel or bundle}: cannot read: {e.strerror}",
                                "Check the bundle's file permissions.", path=rel) from e
    except Exception as e:  # InvalidSignature, KeyError, ... from a tampered model.sig
        raise _bad_signature() from e
    signed = signed_digests(bundle)
    if set(present) != set(signed):  # e.g. git paths, which model_signing skips
        raise _diagnose(bundle, present, signed)
    return signed


def _signed_manifest(sig: Path, public_key: Path) -> dict[str, str]:
    """Check the envelope of ``sig`` with ``public_key`` alone (no file is hashed) and return
    the signed ``{relative path: sha256 hex}``.

    Read from model_signing 1.1.1 (verifying.py ``Config.verify``; _signing/sign_ec_key.py
    ``Verifier``): ``Config.verify`` hashes the folder and insists that every signed file be
    present, so a download of some of the files cannot pass it. The verifier object it holds
    checks the DSSE signature, the key hint and the statement's root digest, and returns the
    signed manifest; it is a private attribute (``_verifier``), used only here. Any failure is
    ``ValueError`` or another exception of model_signing, cryptography or json.
    """
    from model_signing import verifying
    from model_signing._signing import sign_sigstore_pb

    config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    manifest = config._verifier.verify(sign_sigstore_pb.Signature.read(sig))
    kind = manifest.serialization_type
    if kind.get("method") != "files" or kind.get("hash_type") != "sha256":
        raise ValueError(f"unsupported layout {kind.get('method')}/{kind.get('hash_type')}")
    return {rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()}


def verify_signature_partial(bundle: Path, public_key: Path, *, optional: Callable[[str], bool],
                             ) -> tuple[dict[str, str], tuple[str, ...]]:
    """Like :func:`verify_signature`, but signed files for which ``optional(path)`` is true may
    be absent (a download of one quant). Returns the signed digests and the absent paths.

    Every present file must hash to its signed digest (5) and be covered by the signature (6);
    a missing file that is not optional fails (7). Present files are hashed here, once each.
    """
    bundle = _bundle_dir(bundle)
    sig = bundle / SIGNATURE_FILE
    if not os.path.lexists(sig):
        raise VerificationError("model.sig: the bundle is not signed", _UNSIGNED_HINT,
                                path=SIGNATURE_FILE, exit_code=3)
    present = [f for f in scan_files(bundle) if f != SIGNATURE_FILE]  # links first (exit 8)
    if not sig.is_file():
        raise _bad_signature("not a regular file")
    load_public_key(Path(public_key))
    try:
        signed = _signed_manifest(sig, Path(public_key))
    except OSError as e:
        raise VerificationError(f"{SIGNATURE_FILE}: cannot read: {e.strerror}",
                                "Check the bundle's file permissions.",
                                path=SIGNATURE_FILE) from e
    except Exception as e:  # ValueError, InvalidSignature, KeyError... from a tampered model.sig
        raise _bad_signature() from e
    try:
        if err := _first_difference(bundle, present, signed, optional=optional):
            raise err
    except OSError as e:  # a file vanished or became unreadable while hashing
        rel = Path(e.filename).resolve().relative_to(bundle).as_posix() \
            if e.filename and Path(e.filename).resolve().is_relative_to(bundle) else None
        raise VerificationError(f"{rel or bundle}: cannot read: {e.strerror}",
                                "Check the bundle's file permissions.", path=rel) from e
    return signed, tuple(sorted(set(signed) - set(present)))
