#!/usr/bin/env python3
"""Build the test vectors for bundle and licence verifiers (needs edgetune installed).

    python mobile_bundle/reference/make_vectors.py [OUT_DIR]     (default: vectors/ here)

Writes a good bundle (built and signed by edgetune itself, holding a tiny valid GGUF; its
charts are swapped for 1x1 PNGs and its report page for a stub, then re-signed, to keep the
folder small), tampered copies of
it, licences and revocation lists, and ``index.json`` listing each case with the exit code and
offending file a verifier must report. The keys are PUBLIC TEST KEYS: their
private halves are committed next to the vectors, so they prove nothing outside these tests.
Existing keys in OUT_DIR are reused; everything else is rebuilt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import sys
import zlib
from datetime import datetime, timezone
from pathlib import Path

from edgetune.bundle import REPORT_FILE, BundleInfo, BundleModel, build_bundle, gguf_file_name
from edgetune.tinymodel import CHATML_TEMPLATE
from edgetune.licences import issue_licence, revoke, write_licence
from edgetune.keys import generate_keypair
from edgetune.signing import sign_bundle

CREATOR, OTHER = "TEST-ONLY-creator", "TEST-ONLY-other"  # never use these keys for real
BUNDLE_ID, VERSION, NAME = "vector-demo", "1.0.0", "vector-demo"
GGUF = gguf_file_name(NAME, "Q4_K_M")
GGUF_NAME = "edgetune test vector"  # general.name, in the GGUF's header


def tiny_gguf(path: Path) -> tuple[int, int]:
    """A valid ~0.5 KB GGUF; returns offsets of a header byte and of a tensor-data byte."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(GGUF_NAME)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8) / 64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = gguf.GGUFReader(str(path)).tensors[0]
    return path.read_bytes().index(GGUF_NAME.encode()), int(tensor.data_offset) + 5


def _tiny_png() -> bytes:
    """A valid 1x1 grey PNG (67 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _info() -> BundleInfo:
    return BundleInfo(
        name=NAME, bundle_id=BUNDLE_ID, version=VERSION, creator_name="Test Vector Creator",
        base_model="test/tiny-random", base_model_license="apache-2.0",
        chat_template=CHATML_TEMPLATE, stop_strings=("<|im_end|>",), default_context=64, system_prompt="You are a test vector.",
        greeting="Hello from a test vector.",
        training={"method": "sft", "backend": "none", "steps": 0, "dataset_rows": 0,
                  "rewards": []},
        eval_results={"target": "phone", "gates_passed": True,
                      "quants": {"Q4_K_M": {"size_bytes": 480, "ppl": 1.0}}},
        license_terms="Test vector only; not a real model.")


def _resign(bundle: Path, key: Path, change) -> None:
    manifest = json.loads((bundle / "edgetune.json").read_text())
    text = change(manifest)
    (bundle / "edgetune.json").write_text(text if isinstance(text, str)
                                          else json.dumps(manifest, indent=2))
    sign_bundle(bundle, key)


def _swap_signed_digest(bundle: Path) -> None:
    """Change the signed statement itself (a digest): the DSSE signature must break."""
    sig = bundle / "model.sig"
    doc = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    (bundle / "eval.json").write_text('{"target": "forged"}\n')
    for r in statement["predicate"]["resources"]:
        if r["name"] == "eval.json":
            r["digest"] = hashlib.sha256(b'{"target": "forged"}\n').hexdigest()
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(doc, indent=2))


def _flip_signature(bundle: Path) -> None:
    sig = bundle / "model.sig"
    doc = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[12] ^= 0x01  # inside r: still well-formed DER, just the wrong number
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(doc, indent=2))


def make_vectors(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in (CREATOR, OTHER):
        if not (out / f"{name}.key").exists():
            generate_keypair(out, name)
        keys[name] = (out / f"{name}.key", out / f"{name}.pub")
    key, pub = keys[CREATOR]
    other_key, other_pub = keys[OTHER]
    for sub in ("bundles", "licences"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "licences").mkdir()

    work = out / ".gguf-source"
    work.mkdir(exist_ok=True)
    header_at, tensor_at = tiny_gguf(work / GGUF)
    good = out / "bundles" / "good"
    build_bundle(good, _info(), [BundleModel("Q4_K_M", work / GGUF, "llama", 64, 1 << 20)],
                 private_key=key)
    shutil.rmtree(work)
    # The charts (20-40 KB each) and the report page (5 KB) are repeated in every copy: keep
    # the layout, not the content (verifiers never look).
    for chart in sorted(good.glob("*.png")):
        chart.write_bytes(_tiny_png())
    (good / REPORT_FILE).write_text("<!DOCTYPE html>\n<title>Test vector: the report page is "
                                    "left out</title>\n")
    sign_bundle(good, key)

    cases: list[dict] = []

    def case(name, code, path, reason, *, tamper=None, bundle=None, key_file=pub,
             licence=None, revocations=None):
        if tamper is not None:
            bundle = out / "bundles" / name
            shutil.copytree(good, bundle, symlinks=True)
            tamper(bundle)
        rel = lambda p: p.relative_to(out).as_posix() if p else None  # noqa: E731
        cases.append({"name": name, "bundle": rel(bundle or good), "key": rel(key_file),
                      "licence": rel(licence), "revocations": rel(revocations),
                      "exit_code": code, "path": path, "reason": reason})

    case("good", 0, None, "untouched bundle")
    case("gguf-header-byte", 5, GGUF, "one bit flipped in the GGUF metadata (general.name)",
         tamper=lambda b: _flip(b / GGUF, header_at))
    case("gguf-tensor-byte", 5, GGUF, "one bit flipped in the GGUF tensor data",
         tamper=lambda b: _flip(b / GGUF, tensor_at))
    case("manifest-byte", 5, "edgetune.json", "one bit flipped in the manifest, not re-signed",
         tamper=lambda b: _flip(b / "edgetune.json",
                                (b / "edgetune.json").read_bytes().index(b"Test Vector")))
    case("eval-json-byte", 5, "eval.json", "one bit flipped in a signed non-GGUF JSON file",
         tamper=lambda b: _flip(b / "eval.json", (b / "eval.json").read_bytes().index(b"phone")))
    case("persona-byte", 5, "personas/pocketpal-pal.json",
         "one bit flipped in a persona file (PocketPal Pal)",
         tamper=lambda b: _flip(b / "personas/pocketpal-pal.json",
                                (b / "personas/pocketpal-pal.json").read_bytes().index(b"test vector")))
    case("signature-byte", 4, "model.sig", "one bit flipped in the DSSE signature",
         tamper=_flip_signature)
    case("signature-payload", 4, "model.sig",
         "signed statement edited to match an altered file, without the key",
         tamper=_swap_signed_digest)
    case("unsigned", 3, "model.sig", "model.sig removed",
         tamper=lambda b: (b / "model.sig").unlink())
    case("added-file", 6, "notes.txt", "an unsigned file added",
         tamper=lambda b: (b / "notes.txt").write_text("not signed\n"))
    case("removed-file", 7, "eval.json", "a signed file removed",
         tamper=lambda b: (b / "eval.json").unlink())
    case("renamed-file", 7, "README.md", "README.md renamed to README.txt",
         tamper=lambda b: (b / "README.md").rename(b / "README.txt"))
    case("symlink", 8, "alias.gguf", "a symbolic link to the GGUF added",
         tamper=lambda b: (b / "alias.gguf").symlink_to(GGUF))
    case("path-escape", 10, f"../{GGUF}", "manifest artifact path '../...', re-signed with the "
         "creator key so that only the path check catches it",
         tamper=lambda b: _resign(b, key, lambda m: m["artifacts"][0].update(path=f"../{GGUF}")))
    case("manifest-sha-mismatch", 11, GGUF, "manifest sha256 differs from the signed digest, "
         "re-signed", tamper=lambda b: _resign(
             b, key, lambda m: m["artifacts"][0].update(sha256=hashlib.sha256(b"x").hexdigest())))
    case("manifest-not-json", 9, "edgetune.json", "manifest is not JSON, re-signed",
         tamper=lambda b: _resign(b, key, lambda m: "{not json"))
    case("foreign-key-id", 4, "edgetune.json", "creator.key_id names another key, re-signed",
         tamper=lambda b: _resign(b, key, lambda m: m["creator"].update(
             key_id=hashlib.sha256(b"another key").hexdigest())))
    case("wrong-key", 4, "model.sig", "good bundle checked with another creator's key",
         key_file=other_pub)

    lic = out / "licences"

    def licence(name, signer=key, **fields):
        args = dict(bundle_id=BUNDLE_ID, bundle_version=VERSION, follower=f"{name}@example.com",
                    expires="2099-12-31", devices=2) | fields
        return write_licence(issue_licence(signer, None, **args), lic / f"{name}.licence.json")

    good_lic = licence("good")
    revoked_lic = licence("revoked")
    revocations = lic / "revocations.json"
    revoke(key, None, revocations, licence_ids=[json.loads(base64.b64decode(json.loads(
        revoked_lic.read_text())["payload"]))["licence_id"]], bundle_id=BUNDLE_ID)
    other_revocations = lic / "revocations-other-key.json"
    revoke(other_key, None, other_revocations, licence_ids=["0" * 32], bundle_id=BUNDLE_ID)
    garbled = lic / "garbled.licence.json"
    garbled.write_text("{not json\n")
    r = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    case("licence-good", 0, None, "valid licence, no expiry check failing, not revoked",
         licence=good_lic, revocations=revocations)
    case("licence-expired", 13, r(lic / "expired.licence.json"), "licence expired 2000-12-31",
         licence=licence("expired", expires="2000-12-31",
                         now=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    case("licence-other-bundle", 14, r(lic / "other-bundle.licence.json"),
         "licence for another bundle_id", licence=licence("other-bundle", bundle_id="other-model"))
    case("licence-other-version", 14, r(lic / "other-version.licence.json"),
         "licence for version 2.0.0", licence=licence("other-version", bundle_version="2.0.0"))
    case("licence-revoked", 15, r(revoked_lic), "licence listed in the revocation list",
         licence=revoked_lic, revocations=revocations)
    case("licence-wrong-key", 12, r(lic / "wrong-key.licence.json"),
         "licence signed by another key", licence=licence("wrong-key", signer=other_key))
    case("licence-garbled", 16, r(garbled), "licence file is not JSON", licence=garbled)
    case("revocations-wrong-key", 12, r(other_revocations),
         "revocation list signed by another key", licence=good_lic,
         revocations=other_revocations)

    index = {"about": "edgetune verifier test vectors; keys are PUBLIC TEST KEYS, never for "
                      "real use. Run: python verify.py BUNDLE --key KEY [--licence L] "
                      "[--revocations R] from this folder; expect exit_code and path.",
             "vectors": cases}
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "README.md").write_text(
        "# Verifier test vectors\n\nGenerated by `../make_vectors.py`; `index.json` lists each "
        "case with the exit code and file a verifier must report (see `../README.md`).\n\n"
        "**`TEST-ONLY-*.key` and `.pub` are public test keys.** Their private halves are "
        "published here, so anything they sign proves nothing. Never use them for real.\n")
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "vectors"
    made = make_vectors(target)
    print(f"{len(made)} vectors in {target}")
