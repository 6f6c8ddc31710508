"""The standalone reference verifier (mobile_bundle/reference) against its test vectors,
and against edgetune's own verifier on freshly regenerated vectors."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgetune.bundle import verify_bundle
from edgetune.errors import VerificationError
from edgetune.licences import load_revocations, verify_licence

REFERENCE = Path(__file__).resolve().parents[1] / "mobile_bundle" / "reference"
VERIFY = REFERENCE / "verify.py"
VECTORS = REFERENCE / "vectors"
COMMITTED = json.loads((VECTORS / "index.json").read_text())["vectors"]
NAMES = [v["name"] for v in COMMITTED]


def _argv(v: dict, base: Path) -> list[str]:
    argv = [str(base / v["bundle"]), "--key", str(base / v["key"])]
    for opt in ("licence", "revocations"):
        if v[opt]:
            argv += [f"--{opt}", str(base / v[opt])]
    return argv


def _reference(v: dict, base: Path) -> tuple[int, str]:
    run = subprocess.run([sys.executable, str(VERIFY), *_argv(v, base)], capture_output=True,
                         text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr


def _edgetune(v: dict, base: Path) -> tuple[int, str | None]:
    """What edgetune's library says about a vector (the CLI maps errors to these codes)."""
    try:
        result = verify_bundle(base / v["bundle"], base / v["key"])
        revoked = load_revocations(base / v["revocations"], base / v["key"]) \
            if v["revocations"] else None
        if v["licence"]:
            verify_licence(base / v["licence"], base / v["key"], bundle_id=result.bundle_id,
                           bundle_version=result.version, revocations=revoked)
    except VerificationError as e:
        return e.exit_code, e.path
    return 0, None


def _names_path(v: dict, output: str) -> bool:
    lines = output.strip().splitlines()
    return len(lines) == 1 and (v["path"] is None or v["path"] in lines[0])


def _load_reference():
    spec = importlib.util.spec_from_file_location("edgetune_reference_verify", VERIFY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def committed_results() -> dict[str, tuple[int, str]]:
    with ThreadPoolExecutor(4) as pool:  # one interpreter per vector: run them side by side
        return dict(zip(NAMES, pool.map(lambda v: _reference(v, VECTORS), COMMITTED)))


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory):
    """make_vectors.py run afresh (new keys, new signatures): its index and reference results."""
    out = tmp_path_factory.mktemp("vectors")
    subprocess.run([sys.executable, str(REFERENCE / "make_vectors.py"), str(out)], check=True,
                   capture_output=True, timeout=120)
    index = json.loads((out / "index.json").read_text())["vectors"]
    ref, reference = _load_reference(), {}
    for v in index:  # in-process: the subprocess path is covered by the committed vectors
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = ref.main(_argv(v, out))
        reference[v["name"]] = code, buffer.getvalue()
    return out, {v["name"]: v for v in index}, reference


@pytest.mark.parametrize("name", NAMES)
def test_reference_verifier_on_committed_vector(committed_results, name: str):
    v = COMMITTED[NAMES.index(name)]
    code, output = committed_results[name]
    assert code == v["exit_code"], output
    assert _names_path(v, output), output


def test_vectors_cover_every_required_case():
    codes = {v["name"]: v["exit_code"] for v in COMMITTED}
    required = {"good": 0, "gguf-header-byte": 5, "gguf-tensor-byte": 5, "manifest-byte": 5,
                "eval-json-byte": 5, "signature-byte": 4, "added-file": 6, "removed-file": 7,
                "renamed-file": 7, "symlink": 8, "path-escape": 10, "wrong-key": 4,
                "licence-good": 0, "licence-expired": 13, "licence-other-bundle": 14,
                "licence-other-version": 14, "licence-revoked": 15, "licence-wrong-key": 12}
    assert {n: codes.get(n) for n in required} == required
    assert (VECTORS / "bundles" / "symlink" / "alias.gguf").is_symlink()


def test_vectors_are_small_and_keys_are_labelled():
    files = [p for p in VECTORS.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sum(p.stat().st_size for p in files) < 300_000
    keys = sorted(p.name for p in VECTORS.glob("*.key"))
    assert keys and all(k.startswith("TEST-ONLY-") for k in keys)
    assert "PUBLIC TEST KEYS" in json.loads((VECTORS / "index.json").read_text())["about"]


@pytest.mark.parametrize("name", NAMES)
def test_edgetune_and_reference_agree_on_regenerated_vector(regenerated, name: str):
    out, index, reference = regenerated
    v = index[name]
    assert (v["exit_code"], v["path"]) == (COMMITTED[NAMES.index(name)]["exit_code"],
                                           COMMITTED[NAMES.index(name)]["path"])
    code, path = _edgetune(v, out)
    assert code == v["exit_code"]
    if v["path"] is not None:
        assert path is not None and path.endswith(v["path"])
    ref_code, output = reference[name]
    assert ref_code == code, output
    assert _names_path(v, output), output


def test_regenerated_index_matches_committed(regenerated):
    assert list(regenerated[1]) == NAMES


def test_model_signing_accepts_the_good_vector():
    from model_signing import verifying

    good = VECTORS / "bundles" / "good"
    verifying.Config().use_elliptic_key_verifier(
        public_key=VECTORS / "TEST-ONLY-creator.pub").verify(good, good / "model.sig")


def test_reference_imports_only_stdlib_and_cryptography():
    tree = ast.parse(VERIFY.read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names}
    assert roots - set(sys.stdlib_module_names) == {"cryptography"}


def test_reference_argument_and_key_errors(tmp_path: Path, capsys):
    ref = _load_reference()
    good, pub = VECTORS / "bundles" / "good", VECTORS / "TEST-ONLY-creator.pub"
    with pytest.raises(SystemExit) as info:
        ref.main([str(good)])  # --key missing: 1, not argparse's 2 (2 means "no bundle")
    assert info.value.code == 1
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    assert ref.main([str(good), "--key", str(junk)]) == 1
    assert ref.main([str(good), "--key", str(VECTORS / "TEST-ONLY-creator.key")]) == 1
    assert ref.main([str(tmp_path / "absent"), "--key", str(pub)]) == 2
    assert ref.main([str(good), "--key", str(pub)]) == 0
    assert "OK vector-demo 1.0.0" in capsys.readouterr().out


class _ReadSpy:
    """A file object that records the size of every read."""

    def __init__(self, fh, sizes: list[int]):
        self.fh, self.sizes = fh, sizes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def read(self, n: int = -1) -> bytes:
        self.sizes.append(n)
        return self.fh.read(n)


def test_reference_hashes_in_chunks(tmp_path: Path):
    ref = _load_reference()
    data = b"x" * (3 * ref.CHUNK + 5)
    (tmp_path / "big.bin").write_bytes(data)
    sizes: list[int] = []
    ref.open = lambda path, mode="r": _ReadSpy(open(path, mode), sizes)  # shadows the builtin
    assert ref.sha256_file(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert sizes == [ref.CHUNK] * 5  # four reads with data, one empty read at the end


# --- JSON limits and names on screen (SPEC.md "JSON limits", "Showing names"): the reference
# verifier and edgetune refuse the same hostile documents with the same code.

def _hostile_manifest(edit):
    def make(bundle: Path) -> None:
        from edgetune.signing import sign_bundle

        text = (bundle / "edgetune.json").read_text()
        (bundle / "edgetune.json").write_text(edit(text))
        sign_bundle(bundle, VECTORS / "TEST-ONLY-creator.key")
    return make


def _hostile_name(bundle: Path) -> None:
    (bundle / "x\r\033[2KOK vector-demo 1.0.0: 9 signed files\033[8m").write_text("hi")


HOSTILE = {
    "duplicate-key": (_hostile_manifest(lambda t: t.replace(
        '"license_terms":', '"license_terms": "anything", "license_terms":', 1)), 9),
    "oversize": (_hostile_manifest(lambda t: t.replace(
        '"training": {', '"training": {"pad": "' + "x" * (1 << 20) + '", ', 1)), 9),
    "deep": (_hostile_manifest(lambda t: t.replace(
        '"training": {', '"training": {"deep": ' + "[" * 65 + "]" * 65 + ", ", 1)), 9),
    "control-character-name": (_hostile_name, 6),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_reference_and_edgetune_refuse_hostile_bundles_alike(tmp_path: Path, name: str):
    import shutil

    make, code = HOSTILE[name]
    bundle = Path(shutil.copytree(VECTORS / "bundles" / "good", tmp_path / "bundle"))
    make(bundle)
    v = {"bundle": "bundle", "key": "TEST-ONLY-creator.pub", "licence": None,
         "revocations": None}
    shutil.copy(VECTORS / "TEST-ONLY-creator.pub", tmp_path)
    ref_code, output = _reference(v, tmp_path)
    assert (ref_code, _edgetune(v, tmp_path)[0]) == (code, code), output
    assert len(output.strip().splitlines()) == 1 and "\x1b" not in output, repr(output)
    assert "\r" not in output and "OK" not in output.split(":")[0], repr(output)


def test_reference_refuses_a_licence_with_a_duplicate_key(tmp_path: Path):
    """Signed, but ``expires`` twice: refused (16), as edgetune does, whatever a parser keeps."""
    import base64

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ref = _load_reference()
    good = next(v for v in COMMITTED if v["name"] == "licence-good")
    envelope = json.loads((VECTORS / good["licence"]).read_text())
    body = base64.b64decode(envelope["payload"]).decode()
    body = body[:-1] + ',"expires":"2999-12-31","expires":"2000-01-01"}'
    key = serialization.load_pem_private_key((VECTORS / "TEST-ONLY-creator.key").read_bytes(),
                                             None)
    sig = key.sign(ref.pae(ref.LICENCE, body.encode()), ec.ECDSA(hashes.SHA256()))
    envelope.update(payload=base64.b64encode(body.encode()).decode(),
                    signatures=[{"keyid": "k", "sig": base64.b64encode(sig).decode()}])
    licence = tmp_path / "dup.licence.json"
    licence.write_text(json.dumps(envelope))
    v = {**good, "licence": str(licence)}
    argv = [str(VECTORS / good["bundle"]), "--key", str(VECTORS / good["key"]),
            "--licence", str(licence)]
    assert ref.main(argv) == 16
    assert _edgetune({**v, "bundle": str(VECTORS / good["bundle"]),
                      "key": str(VECTORS / good["key"])}, Path("/"))[0] == 16
