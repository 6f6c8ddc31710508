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
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # exact mode regardless of umask or a previous file
        os.write(fd, data)
    finally:
        os.close(fd)


def generate_keypair(directory: Path, name: str = "edgetune", passphrase: str | None = None,
                     *, overwrite: bool = False) -> KeyPair:
    """Create ``<name>.key`` (PKCS8 PEM, 0600) and ``<name>.pub`` (SPKI PEM, 0644)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite:
        for p in (priv_path, pub_path):
            if os.path.lexists(p):
                raise KeyFileError(f"{p} already exists; refusing to overwrite a key",
                                   "Pick another --name or directory, or pass --overwrite.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pw = passphrase_bytes(passphrase)
        enc: ser.KeySerializationEncryption = (
            ser.BestAvailableEncryption(pw) if pw else ser.NoEncryption())
        write_new_file(priv_path, key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, enc),
                   0o600, overwrite)
        pub_pem = key.public_key().public_bytes(ser.Encoding.PEM,
                                                ser.PublicFormat.SubjectPublicKeyInfo)
        write_new_file(pub_path, pub_pem, 0o644, overwrite)
    except OSError as e:
        raise KeyFileError(f"cannot write key files in {directory}: {e.strerror}",
                           "Check that the directory is writable.") from e
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
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise KeyFileError(f"{kind} key file not found: {path}", _KEY_HINT) from e
    except OSError as e:
        raise KeyFileError(f"cannot read {kind} key file {path}: {e.strerror}",
                           "Check the path and its permissions.") from e


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization as ser

    data = read_key_file(path, "public")
    try:
        key = ser.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not a PEM public key",
                           "Pass the creator's .pub file, not the private key.") from e
    check_p256(key, path, "public")
    return key


def key_id_of(public_key_path: Path) -> str:
    """sha256 hex of the public key's DER SubjectPublicKeyInfo."""
    return key_id(load_public_key(Path(public_key_path)))


def load_private_key(path: Path, passphrase: str | None) -> Any:
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
    except ValueError:
        if pw is not None and b"ENCRYPTED" in data:
            raise KeyFileError(f"wrong passphrase for {path}",
                               "Re-enter the passphrase the key was created with.") from None
        raise KeyFileError(f"{path} is not a readable PEM private key", _KEY_HINT) from None
    check_p256(key, path, "private")
    return key
