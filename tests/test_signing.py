"""Real keys, real model_signing signatures, no mocks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from edgetune.errors import KeyFileError, VerificationError
from edgetune.signing import SIGNATURE_FILE, sign_bundle, signed_digests, verify_signature
from edgetune.keys import generate_keypair, key_id_of

BIG = "model-q4.gguf"
FILES = ["edgetune.json", "README.md", BIG, "personas/coach.json", "personas/deep/tutor.txt"]
PASSPHRASE = "correct horse battery staple"


def _make_bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "personas" / "deep").mkdir(parents=True)
    (bundle / "edgetune.json").write_text(json.dumps({"name": "demo", "version": 1}))
    (bundle / "README.md").write_text("# Demo model card\n")
    (bundle / "personas" / "coach.json").write_text('{"persona": "coach"}')
    (bundle / "personas" / "deep" / "tutor.txt").write_text("You are a tutor.\n")
    (bundle / BIG).write_bytes(os.urandom(3 * 1024 * 1024))
    return bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def bundle(tmp_path: Path, keys) -> Path:
    b = _make_bundle(tmp_path)
    sign_bundle(b, keys.private_key)
    return b


def _fails(bundle: Path, pub: Path) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_signature(bundle, pub)
    return info.value


# --- keys -------------------------------------------------------------------

def test_keypair_modes_and_key_id(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization as ser

    old = os.umask(0o022)
    try:
        kp = generate_keypair(tmp_path / "k", name="alice")
    finally:
        os.umask(old)
    assert kp.private_key == tmp_path / "k" / "alice.key"
    assert kp.public_key == tmp_path / "k" / "alice.pub"
    assert stat.S_IMODE(kp.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(kp.public_key.stat().st_mode) == 0o644
    assert kp.private_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    pub = ser.load_pem_public_key(kp.public_key.read_bytes())
    der = pub.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    assert kp.key_id == hashlib.sha256(der).hexdigest() == key_id_of(kp.public_key)
    assert pub.curve.name == "secp256r1"  # type: ignore[attr-defined]


def test_keypair_refuses_overwrite(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path)
    before = first.private_key.read_bytes()
    with pytest.raises(KeyFileError) as info:
        generate_keypair(tmp_path)
    assert info.value.hint
    assert first.private_key.read_bytes() == before
    first.private_key.unlink()  # the .pub alone also blocks
    with pytest.raises(KeyFileError):
        generate_keypair(tmp_path)
    second = generate_keypair(tmp_path, overwrite=True)
    assert second.key_id != first.key_id
    assert stat.S_IMODE(second.private_key.stat().st_mode) == 0o600


def test_encrypted_key_is_pkcs8_encrypted(tmp_path: Path) -> None:
    kp = generate_keypair(tmp_path, passphrase=PASSPHRASE)
    text = kp.private_key.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert PASSPHRASE not in text


def test_key_id_of_bad_file(tmp_path: Path, keys) -> None:
    with pytest.raises(KeyFileError):
        key_id_of(tmp_path / "nope.pub")
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(KeyFileError):
        key_id_of(junk)
    with pytest.raises(KeyFileError):  # private key given where the public one is expected
        key_id_of(keys.private_key)


# --- sign + verify ----------------------------------------------------------

def test_sign_and_verify(bundle: Path, keys) -> None:
    sig = bundle / SIGNATURE_FILE
    assert sig.is_file()
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []
    digests = verify_signature(bundle, keys.public_key)
    assert sorted(digests) == sorted(FILES)
    for rel in FILES:
        assert digests[rel] == hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    assert digests == signed_digests(bundle)


def test_library_default_verifier_accepts_our_signature(bundle: Path, keys) -> None:
    from model_signing import verifying

    verifying.Config().use_elliptic_key_verifier(public_key=keys.public_key).verify(
        bundle, bundle / SIGNATURE_FILE)


def test_signature_format(bundle: Path) -> None:
    doc = json.loads((bundle / SIGNATURE_FILE).read_text())
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    ser = statement["predicate"]["serialization"]
    assert ser["method"] == "files" and ser["hash_type"] == "sha256"
    assert ser["ignore_paths"] == [SIGNATURE_FILE]
    assert SIGNATURE_FILE not in signed_digests(bundle)


def test_resign_replaces_signature(bundle: Path, keys, tmp_path: Path) -> None:
    other = generate_keypair(tmp_path / "other")
    sign_bundle(bundle, other.private_key)
    verify_signature(bundle, other.public_key)
    assert _fails(bundle, keys.public_key).exit_code == 4


def test_passphrase_roundtrip(tmp_path: Path) -> None:
    kp = generate_keypair(tmp_path / "k", passphrase=PASSPHRASE)
    b = _make_bundle(tmp_path)
    sign_bundle(b, kp.private_key, passphrase=PASSPHRASE)
    assert sorted(verify_signature(b, kp.public_key)) == sorted(FILES)


def test_wrong_passphrase(tmp_path: Path) -> None:
    kp = generate_keypair(tmp_path / "k", passphrase=PASSPHRASE)
    b = _make_bundle(tmp_path)
    with pytest.raises(KeyFileError) as info:
        sign_bundle(b, kp.private_key, passphrase="hunter2-wrong")
    err = info.value
    assert "hunter2-wrong" not in f"{err} {err.hint}" and PASSPHRASE not in f"{err} {err.hint}"
    assert err.hint
    assert not (b / SIGNATURE_FILE).exists()


def test_missing_passphrase(tmp_path: Path) -> None:
    kp = generate_keypair(tmp_path / "k", passphrase=PASSPHRASE)
    with pytest.raises(KeyFileError, match="passphrase"):
        sign_bundle(_make_bundle(tmp_path), kp.private_key)


def test_sign_key_errors(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    b = _make_bundle(tmp_path)
    with pytest.raises(KeyFileError, match="not found"):
        sign_bundle(b, tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError) as info:
        sign_bundle(b, junk)
    assert "AAAA" not in str(info.value)
    p384 = tmp_path / "p384.key"
    p384.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    with pytest.raises(KeyFileError, match="P-256"):
        sign_bundle(b, p384)


def test_sign_refuses_symlink(tmp_path: Path, keys) -> None:
    b = _make_bundle(tmp_path)
    (b / "personas" / "link.json").symlink_to(b / "personas" / "coach.json")
    with pytest.raises(VerificationError) as info:
        sign_bundle(b, keys.private_key)
    assert info.value.path == "personas/link.json"
    assert not (b / SIGNATURE_FILE).exists()


def test_sign_refuses_git_metadata(tmp_path: Path, keys) -> None:
    b = _make_bundle(tmp_path)
    (b / ".gitattributes").write_text("*.gguf filter=lfs\n")
    with pytest.raises(VerificationError) as info:
        sign_bundle(b, keys.private_key)
    assert info.value.path == ".gitattributes"


# --- tampering ----------------------------------------------------------------

@pytest.mark.parametrize("rel", FILES)
def test_flipped_byte_names_file(bundle: Path, keys, rel: str) -> None:
    target = bundle / rel
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (rel, 5)
    assert str(err) == f"{rel}: content does not match its signed hash"
    assert err.hint


def test_added_file(bundle: Path, keys) -> None:
    (bundle / "personas" / "extra.json").write_text("{}")
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("personas/extra.json", 6)


def test_added_git_file_is_caught(bundle: Path, keys) -> None:
    # model_signing's default verifier skips .git* paths; we still refuse them.
    (bundle / ".gitignore").write_text("*\n")
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (".gitignore", 6)


def test_removed_file(bundle: Path, keys) -> None:
    (bundle / "personas" / "deep" / "tutor.txt").unlink()
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("personas/deep/tutor.txt", 7)


def test_renamed_file(bundle: Path, keys) -> None:
    (bundle / "README.md").rename(bundle / "README.txt")
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("README.md", 7)
    assert "README.txt" in str(err)


def test_symlink_in_bundle(bundle: Path, keys) -> None:
    (bundle / "personas" / "deep" / "alias.txt").symlink_to("tutor.txt")
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("personas/deep/alias.txt", 8)


def test_symlinked_folder_in_bundle(bundle: Path, keys, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (bundle / "more").symlink_to(outside, target_is_directory=True)
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("more", 8)


def _assert_bad_signature(err: VerificationError) -> None:
    assert (err.path, err.exit_code) == (SIGNATURE_FILE, 4)
    assert "does not match the public key" in str(err)
    assert "public key" in (err.hint or "")


def test_tampered_signature_bytes(bundle: Path, keys) -> None:
    sig = bundle / SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[10] ^= 0xFF
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(doc))
    _assert_bad_signature(_fails(bundle, keys.public_key))


def test_tampered_signed_payload(bundle: Path, keys) -> None:
    # Swap in the true digest of a modified file: the DSSE signature must break.
    (bundle / "README.md").write_text("# Evil card\n")
    sig = bundle / SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    for r in statement["predicate"]["resources"]:
        if r["name"] == "README.md":
            r["digest"] = hashlib.sha256(b"# Evil card\n").hexdigest()
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(doc))
    _assert_bad_signature(_fails(bundle, keys.public_key))


@pytest.mark.parametrize("content", ["", "not json", "{}", '{"dsseEnvelope": 3}'])
def test_garbage_signature_file(bundle: Path, keys, content: str) -> None:
    (bundle / SIGNATURE_FILE).write_text(content)
    _assert_bad_signature(_fails(bundle, keys.public_key))


def test_wrong_public_key(bundle: Path, tmp_path: Path) -> None:
    other = generate_keypair(tmp_path / "other")
    _assert_bad_signature(_fails(bundle, other.public_key))


def test_missing_signature(tmp_path: Path, keys) -> None:
    b = _make_bundle(tmp_path)
    err = _fails(b, keys.public_key)
    assert (err.path, err.exit_code) == (SIGNATURE_FILE, 3)


def test_verify_bad_public_key_file(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        verify_signature(bundle, tmp_path / "absent.pub")
    junk = tmp_path / "junk.pub"
    junk.write_text("garbage")
    with pytest.raises(KeyFileError):
        verify_signature(bundle, junk)


def test_import_is_cheap() -> None:
    import subprocess

    code = ("import sys, edgetune.signing; "
            "assert 'model_signing' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])
