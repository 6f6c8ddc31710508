"""Check a bundle as a follower's app does: signature, manifest schema, artifacts.

Also the manifest's schema and reading a manifest, which building and stamping share.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from edgetune import keys, resources, signing, strict_json
from edgetune.bundle.files import MANIFEST_FILE, VerifyResult, is_gguf
from edgetune.errors import ConfigError, EdgetuneError, VerificationError

SCHEMA_VERSION = "1.0"
SCHEMA_PATH: Path = resources.bundle_schema()
_REDOWNLOAD = "Re-download the bundle or ask the creator for a corrected release."


def schema_path() -> Path:
    """The manifest's JSON Schema, shipped with edgetune (``mobile_bundle/edgetune.schema.json``)."""
    if not SCHEMA_PATH.is_file():
        raise EdgetuneError(f"the bundle schema is missing ({SCHEMA_PATH})", "Reinstall edgetune.")
    return SCHEMA_PATH


@functools.lru_cache(maxsize=4)
def _validator(path: Path) -> Any:
    from jsonschema import Draft202012Validator as V

    return V(json.loads(path.read_text(encoding="utf-8")), format_checker=V.FORMAT_CHECKER)


def manifest_schema_error(manifest: Any) -> str | None:
    """``"<field path>: <reason>"`` for the most relevant schema violation, or None."""
    from jsonschema.exceptions import best_match

    err = best_match(_validator(schema_path()).iter_errors(manifest))
    if err is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    msg = err.message if len(err.message) <= 160 else err.message[:157] + "..."
    return f"{where.lstrip('.') or '(top level)'}: {msg}"


def read_manifest(root: Path) -> dict:
    """The bundle's manifest, valid against the schema (ConfigError otherwise)."""
    path = root / MANIFEST_FILE
    manifest = strict_json.read(path, strict_json.MANIFEST, error=ConfigError,
                                hint="Sign a bundle folder written by edgetune build.")
    if err := manifest_schema_error(manifest):
        raise ConfigError(f"{path}: {err}", "Fix the manifest (see mobile_bundle/SPEC.md).")
    return manifest


def path_escapes(root: Path, rel: str) -> bool:
    """True when ``rel`` is absolute or would resolve to somewhere outside ``root``."""
    if rel.startswith("/") or "\\" in rel or ".." in rel.split("/") or re.match("[A-Za-z]:", rel):
        return True
    return "\x00" not in rel and not (root / rel).resolve().is_relative_to(root)  # NUL: schema


def _fail(message: str, code: int, path: str | None, hint: str = _REDOWNLOAD) -> VerificationError:
    return VerificationError(message, hint, path=path, exit_code=code)


def verify_bundle(bundle: Path, public_key: Path, *, partial: bool = False) -> VerifyResult:
    """Check signature, manifest schema and artifacts; raise VerificationError on any failure.

    ``partial``: a download of some quants (``edgetune pull USER/NAME:QUANT``). Signed GGUF
    files may be absent, but at least one must be present (else 7); every present file must
    match its signed digest (5) and be signed (6), and every other signed file must be present
    (7). ``VerifyResult.missing`` names the absent GGUFs.
    """
    if not Path(bundle).is_dir():
        raise _fail(f"bundle folder not found: {bundle}", 2, None, "Pass the bundle's folder.")
    root = Path(bundle).resolve()
    missing: tuple[str, ...] = ()
    if partial:  # its errors pass through unchanged, as verify_signature's
        signed, missing = signing.verify_signature_partial(root, public_key, optional=is_gguf)
        if all(rel in missing for rel in signed if is_gguf(rel)):
            raise _fail(f"{missing[0] if missing else 'no GGUF'}: no model file is present "
                        "(every signed GGUF is missing)", 7, missing[0] if missing else None,
                        "Download at least one quant of the bundle.")
    else:
        signed = signing.verify_signature(root, public_key)  # its errors pass through unchanged
    if MANIFEST_FILE not in signed:
        raise _fail(f"{MANIFEST_FILE}: the manifest is missing", 9, MANIFEST_FILE)
    try:  # strictly: duplicate keys, depth, number and size limits (SPEC.md, JSON limits)
        manifest = strict_json.loads(strict_json.read_bytes(root / MANIFEST_FILE,
                                                            strict_json.MANIFEST),
                                     strict_json.MANIFEST)
    except OSError as e:
        raise _fail(f"{MANIFEST_FILE}: cannot read ({e.strerror})", 9, MANIFEST_FILE,
                    "Check the bundle's file permissions.") from None
    except strict_json.JsonRejected as e:
        raise _fail(f"{MANIFEST_FILE}: {e}", 9, MANIFEST_FILE) from None
    listed = manifest.get("artifacts") if isinstance(manifest, dict) else None
    for art in listed if isinstance(listed, list) else []:
        rel = art.get("path") if isinstance(art, dict) else None
        if isinstance(rel, str) and path_escapes(root, rel):
            raise _fail(f"{rel}: artifact path leaves the bundle", 10, rel,
                        "Do not use this bundle: its manifest points outside its folder.")
    if err := manifest_schema_error(manifest):
        raise _fail(f"{MANIFEST_FILE}: {err}", 9, MANIFEST_FILE)
    key_id = keys.key_id_of(Path(public_key))
    if manifest["creator"]["key_id"] != key_id:
        raise _fail(f"{MANIFEST_FILE}: creator.key_id {manifest['creator']['key_id']} does not "
                    f"match the public key ({key_id})", 4, MANIFEST_FILE,
                    "The manifest names another creator key than the one that signed it.")
    seen: set[str] = set()
    for art in manifest["artifacts"]:
        rel = art["path"]
        if rel in seen:
            raise _fail(f"{rel}: listed twice in the manifest", 11, rel)
        seen.add(rel)
        if rel not in signed:
            raise _fail(f"{rel}: listed in the manifest but not in the bundle", 11, rel)
        if art["sha256"] != signed[rel]:
            raise _fail(f"{rel}: manifest sha256 differs from the signed digest", 11, rel)
        if rel not in missing and art["size"] != (root / rel).stat().st_size:
            raise _fail(f"{rel}: manifest size differs from the file", 11, rel)
    for rel in sorted(signed):
        if rel.lower().endswith(".gguf") and rel not in seen:
            raise _fail(f"{rel}: GGUF file is not listed in the manifest", 11, rel)
    total = sum((root / rel).stat().st_size for rel in signed if rel not in missing)
    return VerifyResult(manifest["bundle_id"], manifest["version"], key_id,
                        len(signed) - len(missing), total, missing)
