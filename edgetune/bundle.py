"""Build and verify signed edgetune bundles (layout and rules: ``mobile_bundle/SPEC.md``).

A bundle holds the quantised GGUFs, ``edgetune.json``, ``README.md``, ``eval.json``, ``eval.md``,
``eval.png``, ``reward.png``, ``report.html``, the persona files for phone apps and Ollama
(``edgetune.personas``) and ``model.sig``, and nothing else: unsigned extra files fail
verification.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetune import personas, report, signing
from edgetune.artifacts import Bundle, atomic_dir, write_json_atomic
from edgetune.errors import ConfigError, EdgetuneError, ModelError, VerificationError

MANIFEST_FILE = "edgetune.json"
EVAL_FILE = "eval.json"
EVAL_TABLE_FILE = report.MARKDOWN_FILE
EVAL_CHART_FILE = report.CHART_FILE
REWARD_CHART_FILE = report.REWARD_CHART_FILE
REPORT_FILE = report.HTML_FILE
README_FILE = "README.md"
SCHEMA_VERSION = "1.0"
_INSTALLED_SCHEMA = Path(__file__).parent / "schema" / "edgetune.schema.json"
_REPO_SCHEMA = Path(__file__).parents[1] / "mobile_bundle" / "edgetune.schema.json"
SCHEMA_PATH: Path = _INSTALLED_SCHEMA if _INSTALLED_SCHEMA.is_file() else _REPO_SCHEMA
_REDOWNLOAD = "Re-download the bundle or ask the creator for a corrected release."


def schema_path() -> Path:
    """The manifest's JSON Schema: the installed copy, else the repository's."""
    for candidate in (_INSTALLED_SCHEMA, _REPO_SCHEMA):
        if candidate.is_file():
            return candidate
    raise EdgetuneError(f"the bundle schema is missing (looked in {_INSTALLED_SCHEMA} "
                        f"and {_REPO_SCHEMA})", "Reinstall edgetune.")


@dataclass(frozen=True)
class BundleModel:
    """One quantised GGUF going into the bundle."""

    quant: str
    source: Path
    architecture: str
    context_length: int
    ram_needed_bytes: int


@dataclass(frozen=True)
class BundleInfo:
    name: str
    bundle_id: str
    version: str
    creator_name: str
    base_model: str
    base_model_license: str
    chat_template: str
    stop_strings: tuple[str, ...]
    default_context: int
    system_prompt: str
    greeting: str
    training: dict
    eval_results: dict
    license_terms: str = "All rights reserved by the creator."
    sampling: dict = field(default_factory=lambda: {"temperature": 0.6, "top_p": 0.95})
    suggested_prompts: tuple[str, ...] = ()
    persona_name: str | None = None  # the name chat apps show; None: ``name``
    persona_description: str = ""
    bos_token: str | None = None  # the tokenizer's BOS text (LLMFarm needs it for some templates)
    hf_repo: str | None = None  # "user/repo" once published: PocketPal selects the model by it
    licence_required: bool = False  # apps should ask for a follower licence (SPEC.md Licences)
    # The rows of the adapter's training_log.jsonl: reward.png and report.html show its rewards,
    # settings and warnings. (): no log (both files are still written, saying so).
    training_log: tuple[dict, ...] = ()

    def persona(self) -> personas.Persona:
        return personas.Persona(name=self.persona_name or self.name, system_prompt=self.system_prompt,
                                greeting=self.greeting, suggested_prompts=self.suggested_prompts,
                                description=self.persona_description)


@dataclass(frozen=True)
class VerifyResult:
    bundle_id: str
    version: str
    key_id: str
    files: int  # files covered by the signature (model.sig excluded)
    bytes: int  # their total size


def gguf_file_name(name: str, quant: str) -> str:
    """``<name>-<quant>.gguf`` with both parts reduced to ``[A-Za-z0-9._-]``."""
    stem, q = (re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip(".-") for s in (name, quant))
    if not stem or not q:
        raise ConfigError(f"cannot derive a file name from name={name!r}, quant={quant!r}",
                          "Use letters, digits, '.', '_' or '-' in the model name and quant.")
    return f"{stem}-{q}.gguf"


@functools.lru_cache(maxsize=4)
def _validator(path: Path) -> Any:
    from jsonschema import Draft202012Validator as V

    return V(json.loads(path.read_text(encoding="utf-8")), format_checker=V.FORMAT_CHECKER)


def _schema_error(manifest: Any) -> str | None:
    """``"<field path>: <reason>"`` for the most relevant schema violation, or None."""
    from jsonschema.exceptions import best_match

    err = best_match(_validator(schema_path()).iter_errors(manifest))
    if err is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    msg = err.message if len(err.message) <= 160 else err.message[:157] + "..."
    return f"{where.lstrip('.') or '(top level)'}: {msg}"


def _key_id_from_private(private_key: Path, passphrase: str | None) -> str:
    from cryptography.hazmat.primitives import serialization as ser

    signing._load_private_key(private_key, passphrase)  # KeyFileErrors that never echo secrets
    key = ser.load_pem_private_key(private_key.read_bytes(), signing._passphrase_bytes(passphrase))
    der = key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _check_source(model: BundleModel) -> None:
    try:
        with open(model.source, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        why = "not found" if isinstance(e, FileNotFoundError) else f"unreadable ({e.strerror})"
        raise ModelError(f"{model.quant}: GGUF file {why}: {model.source}",
                         "Run the quantise stage first, or fix the path.") from None
    if magic != b"GGUF":
        raise ModelError(f"{model.quant}: {model.source} is not a GGUF file",
                         "Pass the quantised .gguf files from the quantise stage.")


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to a new file ``dst`` in one pass, returning (sha256 hex, size)."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            while chunk := fi.read(1 << 20):
                digest.update(chunk)
                fo.write(chunk)
                size += len(chunk)
            fo.flush()
            os.fsync(fo.fileno())
    except OSError as e:
        raise ModelError(f"cannot copy {src} into the bundle: {e.strerror}",
                         "Check free disk space and file permissions.") from None
    return digest.hexdigest(), size


def _finite(value: Any) -> Any:
    """JSON round trip in which NaN/inf become null (strict parsers on phones reject them)."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _c: None)


def _quants(eval_results: dict) -> dict[str, dict]:
    """``eval_results["quants"]`` (dict by quant, or list of dicts with "quant") by quant."""
    quants = eval_results.get("quants")
    if isinstance(quants, list):
        quants = {m.get("quant", "?"): m for m in quants if isinstance(m, dict)}
    items = quants.items() if isinstance(quants, dict) else ()
    return {str(q): m for q, m in items if isinstance(m, dict)}


def _eval_summary(eval_results: dict) -> dict:
    """The scalar results, overall and per quant, for the manifest."""
    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}
    quants = {q: scalars(m) for q, m in _quants(eval_results).items()}
    return {**scalars(eval_results), "file": EVAL_FILE, **({"quants": quants} if quants else {})}


def _human(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    i = next((k for k in (3, 2, 1) if abs(n) >= 1024 ** k), 0)
    return f"{n:.0f} B" if i == 0 else f"{n / 1024 ** i:.1f} {('', 'KiB', 'MiB', 'GiB')[i]}"


def _cell(value: Any) -> str:
    text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _model_card(info: BundleInfo, artifacts: list[dict], key_id: str, eval_results: dict) -> str:
    q = json.dumps  # a JSON string is a valid YAML scalar: safe quoting for any user text
    tr = info.training
    main = next((a for a in artifacts if a["quant"] == "Q4_K_M"), artifacts[0])
    files = "\n".join(f"| `{a['path']}` | {_cell(a['quant'])} | {_human(a['size'])} | "
                      f"{_human(a['ram_needed_bytes'])} |" for a in artifacts)
    evaluation = (f"{report.markdown_table(eval_results)}\n"
                  f"![{report.CHART_ALT}]({EVAL_CHART_FILE})\n\n"
                  f"Full results: `{EVAL_FILE}` (this table: `{EVAL_TABLE_FILE}`)."
                  if report.ordered_quants(eval_results)
                  else f"No per-quant results were recorded; see `{EVAL_FILE}`.")
    evaluation += (f"\n\nThe whole report on one page, with the reward curve of training, the "
                   f"quality gates and every file: [`{REPORT_FILE}`]({REPORT_FILE}).")
    sh = "```sh\n{}\n```".format
    return "\n\n".join([
        f"---\nlicense: {q(info.base_model_license)}\nbase_model: {q(info.base_model)}\n"
        "base_model_relation: finetune\npipeline_tag: text-generation\n"
        "tags:\n- gguf\n- edgetune\n- reasoning\n---",
        f"# {info.name}",
        f"{_cell(info.name)} is a small reasoning model by {_cell(info.creator_name)}, fine-tuned "
        f"from `{info.base_model}` with edgetune ({tr.get('method', '?')}, {tr.get('steps', '?')}"
        f" steps on {tr.get('dataset_rows', '?')} question/answer rows). It runs offline in "
        f"llama.cpp-based apps. Greeting: {_cell(info.greeting)}",
        "## Files", "| File | Quant | Size | RAM needed |\n|---|---|---|---|\n" + files,
        "## Evaluation", evaluation,
        "## Use it", "llama.cpp:",
        sh(f"llama-cli -m {main['path']} -cnv -c {info.default_context}"),
        "Ollama (after uploading this folder as a Hugging Face repo):",
        sh(f"ollama run hf.co/<user>/<repo>:{main['quant']}"),
        "PocketPal: copy a `.gguf` to the phone, then Models -> + -> Add Local Model. "
        f"`{main['quant']}` is the best size/quality trade-off for most phones.",
        "## Verify", "Every file is covered by `model.sig` (OpenSSF model-signing, ECDSA P-256). "
        f"Creator key id: `{key_id}`.",
        sh("edgetune verify . --key creator.pub\n"
           "model_signing verify key . --signature model.sig --public_key creator.pub"),
        "## License", f"Base model licence: {_cell(info.base_model_license)}. "
        f"Creator's terms: {_cell(info.license_terms)}"]) + "\n"


def _artifact(model: BundleModel, path: str, sha256: str, size: int) -> dict:
    return {"path": path, "role": "model", "sha256": sha256, "size": size, "quant": model.quant,
            "architecture": model.architecture, "context_length": model.context_length,
            "ram_needed_bytes": model.ram_needed_bytes}


# Which app reads which persona file (manifest persona.files; SPEC.md "Personas").
_PERSONA_APPS = {personas.POCKETPAL_FILE: "pocketpal", personas.CHARACTER_CARD_FILE: "character_card_v2",
                 personas.LLMFARM_FILE: "llmfarm", "Modelfile": "ollama_modelfile",
                 "template": "ollama_template", "system": "ollama_system", "params": "ollama_params"}


def _persona_files(info: BundleInfo, main_file: str) -> dict[str, bytes]:
    return personas.persona_files(
        info.persona(), chat_template=info.chat_template, stop_strings=info.stop_strings,
        sampling=info.sampling, default_context=info.default_context, model_file=main_file,
        creator=info.creator_name, version=info.version, bos_token=info.bos_token,
        hf_repo=info.hf_repo)


def _manifest(info: BundleInfo, key_id: str, created: str, artifacts: list[dict],
              persona_paths: Sequence[str] = ()) -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "bundle_id": info.bundle_id, "version": info.version,
        "created": created, "name": info.name,
        "creator": {"name": info.creator_name, "key_id": key_id},
        "base_model": {"name": info.base_model, "license": info.base_model_license},
        "training": _finite(dict(info.training)), "artifacts": artifacts,
        "runtime": {"chat_template_sha256": hashlib.sha256(
                        info.chat_template.encode("utf-8")).hexdigest(),
                    "stop_strings": list(info.stop_strings),
                    "default_context": info.default_context,
                    "sampling": _finite(dict(info.sampling))},
        "persona": {"name": info.persona_name or info.name, "system_prompt": info.system_prompt,
                    "greeting": info.greeting, "suggested_prompts": list(info.suggested_prompts),
                    "files": {_PERSONA_APPS.get(path, path): path for path in persona_paths}},
        "eval": _eval_summary(_finite(info.eval_results)),
        "distribution": {"hf_repo": info.hf_repo, "licence_required": info.licence_required,
                         "verify_with": "model.sig"},
        "license_terms": info.license_terms,
    }


def build_bundle(out: Path, info: BundleInfo, models: Sequence[BundleModel], *,
                 private_key: Path, passphrase: str | None = None, overwrite: bool = False,
                 on_progress: Callable[[str], None] | None = None) -> Bundle:
    """Write a signed bundle to ``out`` atomically and return its artifact."""
    out, models, private_key = Path(out), list(models), Path(private_key)
    say = on_progress or (lambda _msg: None)
    if not models:
        raise ConfigError("a bundle needs at least one GGUF model", "Quantise the model first.")
    names = [gguf_file_name(info.name, m.quant) for m in models]
    if len({n.lower() for n in names}) != len(names):
        raise ConfigError(f"two models map to the same file name: {', '.join(names)}",
                          "Give each quantised model a distinct quant name.")
    key_id = _key_id_from_private(private_key, passphrase)
    for m in models:
        _check_source(m)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    probe = _manifest(info, key_id, created, [_artifact(m, n, "0" * 64, 0)
                                              for m, n in zip(models, names)])
    if err := _schema_error(probe):  # user input: fail before copying gigabytes
        raise ConfigError(f"invalid bundle settings: {err}", "See mobile_bundle/SPEC.md.")
    main_file = next((n for m, n in zip(models, names) if m.quant == "Q4_K_M"), names[0])
    persona_files = _persona_files(info, main_file)  # user input too: checked before copying
    eval_results = _finite(info.eval_results)
    readable = {**eval_results, "quants": _quants(eval_results)}  # eval.md, eval.png, the card
    with atomic_dir(out, overwrite=overwrite) as tmp:
        os.chmod(tmp, 0o755)
        artifacts = []
        for m, name in zip(models, names):
            say(f"copying {m.quant}: {m.source} -> {name}")
            sha, size = _copy_hashed(Path(m.source), tmp / name)
            artifacts.append(_artifact(m, name, sha, size))
        say("writing persona files, eval.json, eval.md, eval.png, reward.png, README.md, "
            "edgetune.json and report.html")
        for rel, content in persona_files.items():
            target = tmp / rel
            target.parent.mkdir(mode=0o755, exist_ok=True)
            os.chmod(target.parent, 0o755)
            target.write_bytes(content)
        write_json_atomic(tmp / EVAL_FILE, eval_results)
        report.write_reports(tmp, readable)
        report.reward_chart(info.training_log, tmp / REWARD_CHART_FILE)
        (tmp / README_FILE).write_text(_model_card(info, artifacts, key_id, readable),
                                       encoding="utf-8")
        manifest = _manifest(info, key_id, created, artifacts, list(persona_files))
        if err := _schema_error(manifest):
            raise EdgetuneError(f"internal error: the manifest breaks its schema: {err}",
                                "This is a bug in edgetune; please report it.")
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
        # Last before signing, so that it can list every other file with its size.
        files = [(p.relative_to(tmp).as_posix(), p.stat().st_size) for p in tmp.rglob("*")
                 if p.is_file()]
        files = sorted([*files, (REPORT_FILE, None), (signing.SIGNATURE_FILE, None)])
        (tmp / REPORT_FILE).write_text(
            report.html_report(manifest, readable, info.training_log, files), encoding="utf-8")
        for name in [*names, *persona_files, EVAL_FILE, EVAL_TABLE_FILE, EVAL_CHART_FILE,
                     REWARD_CHART_FILE, README_FILE, MANIFEST_FILE, REPORT_FILE]:
            os.chmod(tmp / name, 0o644)
        say("signing")
        signing.sign_bundle(tmp, private_key, passphrase)
    return Bundle(path=out, bundle_id=info.bundle_id, version=info.version, key_id=key_id)


def resign_bundle(bundle: Path, private_key: Path, passphrase: str | None = None) -> Bundle:
    """Sign ``bundle`` again after an edit: refresh each artifact's sha256 and size and the
    creator key id in the manifest, then rewrite ``model.sig`` over every file.

    For a creator who fixed a model card, swapped a persona file or re-quantised a GGUF in
    place; the result must still pass ``verify_bundle`` (checked before returning).
    """
    root = Path(bundle).resolve()
    path = root / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the manifest ({e})",
                          "Sign a bundle folder written by edgetune build.") from None
    if err := _schema_error(manifest):
        raise ConfigError(f"{path}: {err}", "Fix the manifest (see mobile_bundle/SPEC.md).")
    for art in manifest["artifacts"]:
        if _escapes(root, art["path"]) or not (root / art["path"]).is_file():
            raise ConfigError(f"{art['path']}: listed in the manifest but not in the bundle",
                              "Restore the file or remove its entry from edgetune.json.")
        art["sha256"], art["size"] = signing.sha256_file(root / art["path"]), \
            (root / art["path"]).stat().st_size
    manifest["creator"]["key_id"] = _key_id_from_private(Path(private_key), passphrase)
    write_json_atomic(path, manifest)
    os.chmod(path, 0o644)
    signing.sign_bundle(root, private_key, passphrase)
    public = Path(private_key).with_suffix(".pub")
    if public.is_file():
        verify_bundle(root, public)
    return Bundle(path=root, bundle_id=manifest["bundle_id"], version=manifest["version"],
                  key_id=manifest["creator"]["key_id"])


def _escapes(root: Path, rel: str) -> bool:
    """True when ``rel`` is absolute or would resolve to somewhere outside ``root``."""
    if rel.startswith("/") or "\\" in rel or ".." in rel.split("/") or re.match("[A-Za-z]:", rel):
        return True
    return "\x00" not in rel and not (root / rel).resolve().is_relative_to(root)  # NUL: schema


def _fail(message: str, code: int, path: str | None, hint: str = _REDOWNLOAD) -> VerificationError:
    return VerificationError(message, hint, path=path, exit_code=code)


def verify_bundle(bundle: Path, public_key: Path) -> VerifyResult:
    """Check signature, manifest schema and artifacts; raise VerificationError on any failure."""
    if not Path(bundle).is_dir():
        raise _fail(f"bundle folder not found: {bundle}", 2, None, "Pass the bundle's folder.")
    root = Path(bundle).resolve()
    signed = signing.verify_signature(root, public_key)  # its errors pass through unchanged
    if MANIFEST_FILE not in signed:
        raise _fail(f"{MANIFEST_FILE}: the manifest is missing", 9, MANIFEST_FILE)
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _fail(f"{MANIFEST_FILE}: not valid JSON ({e})", 9, MANIFEST_FILE) from None
    listed = manifest.get("artifacts") if isinstance(manifest, dict) else None
    for art in listed if isinstance(listed, list) else []:
        rel = art.get("path") if isinstance(art, dict) else None
        if isinstance(rel, str) and _escapes(root, rel):
            raise _fail(f"{rel}: artifact path leaves the bundle", 10, rel,
                        "Do not use this bundle: its manifest points outside its folder.")
    if err := _schema_error(manifest):
        raise _fail(f"{MANIFEST_FILE}: {err}", 9, MANIFEST_FILE)
    key_id = signing.key_id_of(Path(public_key))
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
        if art["size"] != (root / rel).stat().st_size:
            raise _fail(f"{rel}: manifest size differs from the file", 11, rel)
    for rel in sorted(signed):
        if rel.lower().endswith(".gguf") and rel not in seen:
            raise _fail(f"{rel}: GGUF file is not listed in the manifest", 11, rel)
    total = sum((root / rel).stat().st_size for rel in signed)
    return VerifyResult(manifest["bundle_id"], manifest["version"], key_id, len(signed), total)
