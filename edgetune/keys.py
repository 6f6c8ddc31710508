"""The creator's signing keys: ECDSA P-256 key pairs, loading them, key ids, passphrases.

One home for everything about key files, used by signing (bundles), licences (follower
licences and revocation lists) and the CLI. Errors are ``KeyFileError`` with a hint and never
echo a passphrase or key bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune import paths
from edgetune.artifacts import atomic_file
from edgetune.errors import KeyFileError

DEFAULT_KEY_NAME = "edgetune"
_KEY_HINT = "Keys come from `edgetune keys new` (ECDSA P-256, PEM)."


def default_private_key() -> Path:
    """``$EDGETUNE_HOME/keys/edgetune.key``: the key ``build`` creates on first use."""
    return paths.keys_dir() / f"{DEFAULT_KEY_NAME}.key"


def is_encrypted(private_key: Path) -> bool:
    """Whether the PEM file is passphrase-protected (False when it cannot be read: loading it
    later reports the problem with a hint)."""
    try:
        return b"ENCRYPTED" in Path(private_key).read_bytes()
    except OSError:
        return False


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path
    key_id: str


def passphrase_bytes(passphrase: str | None) -> bytes | None:
    # model_signing annotates the password as str but hands it straight to
    # cryptography, which needs bytes. An empty passphrase means "none".
    return passphrase.encode("utf-8") if passphrase else None


def write_new_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write a key file whole or not at all: a full disk must never leave a 0-byte key that
    every later ``keys new`` takes for an existing one (``artifacts.atomic_file``: a scratch
    file in the same folder, flushed, then given the name; FileExistsError without overwrite)."""
    with atomic_file(path, mode=mode, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def key_file_problem(path: Path, kind: str) -> str | None:
    """Why an existing key file is unusable ("empty", "not a PEM ... key"), else None. An
    encrypted private key counts as usable: its structure is checked, not its passphrase."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if not data.strip():
        return "empty, 0 bytes" if not data else "empty"
    try:
        if kind == "public":
            ser.load_pem_public_key(data)
        else:
            ser.load_pem_private_key(data, None)
    except TypeError:  # encrypted: well-formed as far as can be told without the passphrase
        return None
    except (ValueError, UnsupportedAlgorithm):
        return f"not a PEM {kind} key"
    return None


def permission_warning(private_key: Path) -> str | None:
    """A warning when other users can read the private key (e.g. mode 0644), else None."""
    if os.name != "posix":  # Windows ACLs are not mode bits
        return None
    try:
        mode = Path(private_key).stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"{private_key} can be read by other users of this machine (mode {mode:04o}); "
            f"anyone who copies it can sign bundles and licences as you: chmod 600 {private_key}")


def generate_keypair(directory: Path, name: str = "edgetune", passphrase: str | None = None,
                     *, overwrite: bool = False) -> KeyPair:
    """Create ``<name>.key`` (PKCS8 PEM, 0600) and ``<name>.pub`` (SPKI PEM, 0644)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite:
        for p, kind in ((priv_path, "private"), (pub_path, "public")):
            if not os.path.lexists(p):
                continue
            if problem := key_file_problem(p, kind):
                raise KeyFileError(
                    f"{p} exists but is broken ({problem}): it is not a usable {kind} key",
                    "If it never signed anything (e.g. it was written on a full disk), delete "
                    "it or pass --overwrite; if it did, restore it from a backup, as followers "
                    "verify with its key.")
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key",
                               "Pick another --name or directory, or pass --overwrite.")
    key = ec.generate_private_key(ec.SECP256R1())
    pw = passphrase_bytes(passphrase)
    enc: ser.KeySerializationEncryption = (
        ser.BestAvailableEncryption(pw) if pw else ser.NoEncryption())
    pub_pem = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_new_file(priv_path, key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, enc),
                       0o600, overwrite)
        written.append(priv_path)
        write_new_file(pub_path, pub_pem, 0o644, overwrite)
    except OSError as e:
        if not overwrite:  # a pair or nothing: a lone .key would block the next try
            for p in written:
                p.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write key files in {directory}: {e.strerror or e}",
                           "Check that the folder is writable and the disk not full.") from e
    return KeyPair(priv_path, pub_path, key_id(key.public_key()))


def key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization as ser

    der = public_key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def check_p256(key: Any, path: Path, kind: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) \
            or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{path} is not an ECDSA P-256 {kind} key", _KEY_HINT)


def read_key_file(path: Path, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise KeyFileError(f"{kind} key file not found: {path}", _KEY_HINT) from e
    except OSError as e:
        raise KeyFileError(f"cannot read {kind} key file {path}: {e.strerror}",
                           "Check the path and its permissions.") from e
    if not data.strip():
        raise KeyFileError(f"{kind} key file {path} is empty: it is broken, not a key",
                           "If it never signed anything (e.g. written on a full disk), make a new "
                           "pair with `edgetune keys new --overwrite`; else restore it from a "
                           "backup.")
    return data


def load_public_key(path: Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    data = read_key_file(path, "public")
    try:
        key = ser.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM public key",
                           "Pass the creator's .pub file, not the private key.") from e
    check_p256(key, path, "public")
    return key


def key_id_of(public_key_path: Path) -> str:
    """sha256 hex of the public key's DER SubjectPublicKeyInfo."""
    return key_id(load_public_key(Path(public_key_path)))


def load_private_key(path: Path, passphrase: str | None) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    data = read_key_file(path, "private")
    pw = passphrase_bytes(passphrase)
    try:
        key = ser.load_pem_private_key(data, pw)
    except TypeError:  # never echo the passphrase or key bytes
        if pw is None:
            raise KeyFileError(f"{path} is protected by a passphrase",
                               "Supply the passphrase the key was created with.") from None
        raise KeyFileError(f"{path} is not encrypted but a passphrase was given",
                           "Sign without a passphrase.") from None
    except (ValueError, UnsupportedAlgorithm):
        if pw is not None and b"ENCRYPTED" in data:
            raise KeyFileError(f"wrong passphrase for {path}",
                               "Re-enter the passphrase the key was created with.") from None
        raise KeyFileError(f"{path} is not a readable PEM private key", _KEY_HINT) from None
    check_p256(key, path, "private")
    return key
