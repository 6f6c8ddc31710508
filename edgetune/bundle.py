"""Build and verify signed edgetune bundles (layout and rules: ``mobile_bundle/SPEC.md``).

A bundle holds the quantised GGUFs, ``edgetune.json``, ``README.md``, ``eval.json``, ``eval.md``,
``eval.png``, ``reward.png``, ``report.html``, the persona files for phone apps and Ollama
(``edgetune.personas``) and ``model.sig``, and nothing else: unsigned extra files fail
verification.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetune import keys, personas, report, resources, signing
from edgetune.artifacts import Bundle, atomic_dir, write_bytes_atomic, write_json_atomic
from edgetune.errors import ConfigError, EdgetuneError, ModelError, VerificationError

MANIFEST_FILE = "edgetune.json"
EVAL_FILE = "eval.json"
EVAL_TABLE_FILE = report.MARKDOWN_FILE
EVAL_CHART_FILE = report.CHART_FILE
REWARD_CHART_FILE = report.REWARD_CHART_FILE
REPORT_FILE = report.HTML_FILE
README_FILE = "README.md"
SCHEMA_VERSION = "1.0"
SCHEMA_PATH: Path = resources.bundle_schema()
_REDOWNLOAD = "Re-download the bundle or ask the creator for a corrected release."
# The one field of a gated repo's access form (README front matter ``extra_gated_fields``); the
# code that syncs paying followers with access requests matches requests by this name.
GATED_EMAIL_FIELD = "Email used for payment"
# What the Hub accepts as a model id in ``base_model`` (huggingface_hub validate_repo_id: no
# "--" or "..", no '-' or '.' at either end of a part, names of at most 96 characters).
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+", re.ASCII)
_HUB_ID_BAD = re.compile(r"--|\.\.|(^|/)[.-]|[.-](/|$)")


def schema_path() -> Path:
    """The manifest's JSON Schema, shipped with edgetune (``mobile_bundle/edgetune.schema.json``)."""
    if not SCHEMA_PATH.is_file():
        raise EdgetuneError(f"the bundle schema is missing ({SCHEMA_PATH})", "Reinstall edgetune.")
    return SCHEMA_PATH


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
    gated: bool = False  # the repo is gated: followers request access (the card's access form)
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
    files: int  # files checked: those covered by the signature (model.sig excluded) and present
    bytes: int  # their total size
    # Signed GGUF files that are absent: only ever non-empty after verify_bundle(partial=True)
    # (a download of some quants); the others were all present and checked.
    missing: tuple[str, ...] = ()


def gguf_file_name(name: str, quant: str) -> str:
    """``<name>-<quant>.gguf`` with both parts reduced to ``[A-Za-z0-9._-]``."""
    stem, q = (re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip(".-") for s in (name, quant))
    if not stem or not q:
        raise ConfigError(f"cannot derive a file name from name={name!r}, quant={quant!r}",
                          "Use letters, digits, '.', '_' or '-' in the model name and quant.")
    return f"{stem}-{q}.gguf"


def _is_gguf(rel: str) -> bool:
    return rel.lower().endswith(".gguf")


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


def _key_id_from_private(private_key: Path, passphrase: str | None) -> str:
    # KeyFileErrors that never echo secrets
    return keys.key_id(keys.load_private_key(private_key, passphrase).public_key())


def _check_source(model: BundleModel) -> None:
    from edgetune.llamacpp import NOT_GGUF, gguf_problem

    why = gguf_problem(model.source)
    if why == NOT_GGUF:
        raise ModelError(f"{model.quant}: {model.source} is not a GGUF file",
                         "Pass the quantised .gguf files from the quantise stage.")
    if why:
        raise ModelError(f"{model.quant}: GGUF file {why.removeprefix('file ')}: {model.source}",
                         "Run the quantise stage first, or fix the path.")


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


def _cell(value: Any) -> str:
    text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _hub_id(name: Any) -> bool:
    """True when ``name`` can be a Hub model id (``owner/name``), e.g. ``Qwen/Qwen3-0.6B``."""
    return isinstance(name, str) and _HUB_ID.fullmatch(name) is not None \
        and not _HUB_ID_BAD.search(name) and len(name.split("/")[1]) <= 96


def _main_artifact(artifacts: Sequence[dict]) -> dict:
    """The artifact apps use by default: the Q4_K_M one, else the first."""
    return next((a for a in artifacts if a["quant"] == "Q4_K_M"), artifacts[0])


def _readable(eval_results: dict) -> dict:
    """``eval.json``'s results with ``quants`` by quant: what eval.md, eval.png and the card
    show."""
    return {**eval_results, "quants": _quants(eval_results)}


def _front_matter(manifest: dict) -> str:
    """The card's YAML front matter: Hub metadata (https://huggingface.co/docs/hub/model-cards)."""
    q = json.dumps  # a JSON string is a valid YAML scalar: safe quoting for any user text
    base, creator = manifest["base_model"], manifest["creator"]["name"]
    dist = manifest.get("distribution") or {}
    lines = [f"license: {q(base['license'])}"]
    if _hub_id(base["name"]):  # the Hub rejects a card whose base_model is no model id
        lines += [f"base_model: {q(base['name'])}", "base_model_relation: finetune"]
    lines += [f"quantized_by: {q(creator)}", "pipeline_tag: text-generation",
              "tags:\n- gguf\n- edgetune\n- reasoning"]
    if dist.get("gated"):
        prompt = (f"Access to {manifest['name']} is for the paying followers of {creator}. "
                  f"{creator} approves each request by hand: give the email address you used "
                  "for payment.")
        lines += [f"extra_gated_prompt: {q(prompt)}",
                  f"extra_gated_fields:\n  {q(GATED_EMAIL_FIELD)}: text",
                  f"extra_gated_button_content: {q('Request access')}"]
    return "---\n" + "\n".join(lines) + "\n---"


def _use_it(manifest: dict, main: dict) -> list[str]:
    """The card's "Use it" section: from the Hub when the manifest names a repo, else files."""
    sh = "```sh\n{}\n```".format
    repo, ctx = (manifest.get("distribution") or {}).get("hf_repo"), \
        manifest["runtime"]["default_context"]
    best = f"`{main['quant']}` is the best size/quality trade-off for most phones."
    if not repo:
        return ["llama.cpp:", sh(f"llama-cli -m {main['path']} -cnv -c {ctx}"),
                "Ollama (after uploading this folder as a Hugging Face repo):",
                sh(f"ollama run hf.co/<user>/<repo>:{main['quant']}"),
                "PocketPal: copy a `.gguf` to the phone, then Models -> + -> Add Local Model. "
                + best]
    tag = f"{repo}:{main['quant']}"
    pal = (manifest["persona"].get("files") or {}).get("pocketpal")
    out = ["llama.cpp (downloads the file from the Hub):", sh(f"llama-cli -hf {tag} -cnv -c {ctx}"),
           "Ollama:", sh(f"ollama run hf.co/{tag}"),
           f"LM Studio: `lms get {repo}`, or search `{repo}` in Discover.",
           f"PocketPal: Models -> + -> Add from Hugging Face, search `{repo}` and download "
           f"`{main['path']}`." + (f" Import `{pal}` in Pals for the persona." if pal else "")
           + f" {best}",
           "edgetune (downloads one quant and verifies it with the creator's key):",
           sh(f"edgetune pull {tag} --key creator.pub")]
    if (manifest.get("distribution") or {}).get("gated"):
        out.append("This repository is gated: request access on this page first. Then llama.cpp "
                   "and edgetune need a Hugging Face access token in `HF_TOKEN`, PocketPal the "
                   "same token in its settings, and Ollama its public key "
                   "(`~/.ollama/id_ed25519.pub`) in your Hugging Face SSH keys.")
    return out


def _model_card(manifest: dict, eval_results: dict, *, report_page: bool = True) -> str:
    """``README.md`` from the manifest and the readable eval results (:func:`_readable`), so a
    bundle's card can be written again after its manifest changes (:func:`stamp_distribution`).
    ``report_page``: link ``report.html`` (older bundles have none)."""
    tr, artifacts = manifest["training"], manifest["artifacts"]
    name, creator = manifest["name"], manifest["creator"]
    main = _main_artifact(artifacts)
    files = "\n".join(f"| `{a['path']}` | {_cell(a['quant'])} | {report.human_size(a['size'])} | "
                      f"{report.human_size(a['ram_needed_bytes'])} |" for a in artifacts)
    evaluation = (f"{report.markdown_table(eval_results)}\n"
                  f"![{report.CHART_ALT}]({EVAL_CHART_FILE})\n\n"
                  f"Full results: `{EVAL_FILE}` (this table: `{EVAL_TABLE_FILE}`)."
                  if report.ordered_quants(eval_results)
                  else f"No per-quant results were recorded; see `{EVAL_FILE}`.")
    if report_page:
        evaluation += (f"\n\nThe whole report on one page, with the reward curve of training, "
                       f"the quality gates and every file: [`{REPORT_FILE}`]({REPORT_FILE}).")
    verify = ["## Verify", "Every file is covered by `model.sig` (OpenSSF model-signing, "
              f"ECDSA P-256). Creator key id: `{creator['key_id']}`.",
              "```sh\nedgetune verify . --key creator.pub\n"
              "model_signing verify key . --signature model.sig --public_key creator.pub\n```"]
    if (manifest.get("distribution") or {}).get("hf_repo"):
        verify.append("`edgetune pull` checks a download of some quants against the same "
                      "signature; `model_signing verify` needs every file of the repo.")
    return "\n\n".join([
        _front_matter(manifest),
        f"# {name}",
        f"{_cell(name)} is a small reasoning model by {_cell(creator['name'])}, fine-tuned "
        f"from `{manifest['base_model']['name']}` with edgetune ({tr.get('method', '?')}, "
        f"{tr.get('steps', '?')} steps on {tr.get('dataset_rows', '?')} question/answer rows). "
        f"It runs offline in llama.cpp-based apps. Greeting: "
        f"{_cell(manifest['persona']['greeting'])}",
        "## Files", "| File | Quant | Size | RAM needed |\n|---|---|---|---|\n" + files,
        "## Evaluation", evaluation,
        "## Use it", *_use_it(manifest, main),
        *verify,
        "## License", f"Base model licence: {_cell(manifest['base_model']['license'])}. "
        f"Creator's terms: {_cell(manifest['license_terms'])}"]) + "\n"


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


def _distribution(hf_repo: str | None, gated: bool, licence_required: bool) -> dict:
    # "gated" only when true: a manifest of a repo that is not gated stays the same as before
    # the field existed, so verifiers with an older schema still accept it.
    return {"hf_repo": hf_repo, **({"gated": True} if gated else {}),
            "licence_required": licence_required, "verify_with": "model.sig"}


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
        "distribution": _distribution(info.hf_repo, info.gated, info.licence_required),
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
    if err := manifest_schema_error(probe):  # user input: fail before copying gigabytes
        raise ConfigError(f"invalid bundle settings: {err}", "See mobile_bundle/SPEC.md.")
    main_file = next((n for m, n in zip(models, names) if m.quant == "Q4_K_M"), names[0])
    persona_files = _persona_files(info, main_file)  # user input too: checked before copying
    eval_results = _finite(info.eval_results)
    readable = _readable(eval_results)  # eval.md, eval.png, the card
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
        manifest = _manifest(info, key_id, created, artifacts, list(persona_files))
        if err := manifest_schema_error(manifest):
            raise EdgetuneError(f"internal error: the manifest breaks its schema: {err}",
                                "This is a bug in edgetune; please report it.")
        (tmp / README_FILE).write_text(_model_card(manifest, readable), encoding="utf-8")
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


def read_manifest(root: Path) -> dict:
    """The bundle's manifest, valid against the schema (ConfigError otherwise)."""
    path = root / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the manifest ({e})",
                          "Sign a bundle folder written by edgetune build.") from None
    if err := manifest_schema_error(manifest):
        raise ConfigError(f"{path}: {err}", "Fix the manifest (see mobile_bundle/SPEC.md).")
    return manifest


def resign_bundle(bundle: Path, private_key: Path, passphrase: str | None = None) -> Bundle:
    """Sign ``bundle`` again after an edit: refresh each artifact's sha256 and size and the
    creator key id in the manifest, then rewrite ``model.sig`` over every file.

    For a creator who fixed a model card, swapped a persona file or re-quantised a GGUF in
    place; the result must still pass ``verify_bundle`` (checked before returning).
    """
    root = Path(bundle).resolve()
    path = root / MANIFEST_FILE
    manifest = read_manifest(root)
    for art in manifest["artifacts"]:
        if path_escapes(root, art["path"]) or not (root / art["path"]).is_file():
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


def _refresh_report_sizes(root: Path, paths: Iterable[str]) -> None:
    """Set the sizes that ``report.html`` lists for ``paths`` to those of the files now.

    The page is drawn from the training log, which the bundle does not keep, so it cannot be
    drawn again; only its rows of these files change, written as ``report.html_report`` writes
    them (its ``escape_html`` and ``human_size``, so that the row is the one it would draw).
    """
    page_path = root / REPORT_FILE
    if not page_path.is_file():  # bundles from before report.html
        return
    old = page = page_path.read_text(encoding="utf-8")
    for rel in paths:
        size = (root / rel).stat().st_size
        row = re.compile('(<tr><td><code>' + re.escape(report.escape_html(rel)) +
                         '</code></td><td class="n">)[^<]*(</td><td class="n">)[^<]*(</td></tr>)')
        page = row.sub(lambda m, n=size: f"{m[1]}{report.human_size(n)}{m[2]}{n:,}{m[3]}", page,
                       count=1)
    if page != old:
        write_bytes_atomic(page_path, page.encode("utf-8"))


def _signed_as_is(root: Path) -> bool:
    """True when every signed file but the GGUFs is present and hashes to its digest in
    ``model.sig`` (the creator's own bundle: the signature itself is not checked here).
    Small files only: the GGUFs are neither read nor hashed."""
    try:
        signed = signing.signed_digests(root)
        return all(not path_escapes(root, rel) and signing.sha256_file(root / rel) == digest
                   for rel, digest in signed.items() if not _is_gguf(rel))
    except (VerificationError, OSError):  # unsigned, unreadable signature, a missing file
        return False


def card_for_repo(bundle: Path, *, hf_repo: str, gated: bool) -> str:
    """The README.md that :func:`stamp_distribution` would write, without writing anything
    (``edgetune publish --dry-run``)."""
    root = Path(bundle).resolve()
    manifest = read_manifest(root)
    dist = manifest.get("distribution") or {}
    if dist.get("hf_repo") == hf_repo and dist.get("gated", False) == gated:
        return (root / README_FILE).read_text(encoding="utf-8")
    manifest["distribution"] = _distribution(hf_repo, gated, dist.get("licence_required", False))
    eval_results = json.loads((root / EVAL_FILE).read_text(encoding="utf-8"))
    return _model_card(manifest, _readable(eval_results), report_page=(root / REPORT_FILE).is_file())


def stamp_distribution(bundle: Path, *, hf_repo: str, gated: bool, private_key: Path,
                       passphrase: str | None = None) -> bool:
    """Record that ``bundle`` is published as the Hugging Face repo ``hf_repo`` (``user/name``),
    gated or not, and sign it again. Returns False, changing nothing, when the manifest already
    says so and every file but the GGUFs matches the signature.

    Sets the manifest's ``distribution.hf_repo`` and ``distribution.gated`` (``licence_required``
    is kept), points PocketPal's Pal (``defaultModel``) at the main GGUF in that repo, writes
    ``README.md`` again from the manifest and ``eval.json`` (Hub metadata, gated access form,
    download commands for the repo), updates those files' sizes in ``report.html``, then signs
    with :func:`resign_bundle`, which verifies when the ``.pub`` lies beside the key. The GGUFs
    are hashed only there.

    Crash safety: each file is replaced atomically (Pal, README.md, manifest, report.html, then
    model.sig). After a crash every file is whole, old or new, and a scratch file may be left:
    running ``stamp_distribution`` again repairs the bundle (until it has signed, the manifest
    or a signed small file differs from ``model.sig``, so it redoes every step, removing its
    scratch files first), and ``edgetune sign`` (:func:`resign_bundle`) makes the bundle, as
    it stands, verify again.
    """
    root = Path(bundle).resolve()
    if not personas.valid_hf_repo(hf_repo):
        raise ConfigError(f"hf_repo must look like 'user/repo', not {hf_repo!r}",
                          "Name the Hugging Face repository as USER/NAME.")
    if not isinstance(gated, bool):
        raise ConfigError(f"gated must be true or false, not {gated!r}", "Pass a boolean.")
    manifest = read_manifest(root)
    dist = manifest.get("distribution") or {}
    if dist.get("hf_repo") == hf_repo and dist.get("gated", False) == gated \
            and _signed_as_is(root):
        return False
    stamped = copy.deepcopy(manifest)
    stamped["distribution"] = _distribution(hf_repo, gated, dist.get("licence_required", False))
    if err := manifest_schema_error(stamped):  # e.g. a repo name the schema refuses
        raise ConfigError(f"cannot stamp {hf_repo!r} into {root}: {err}",
                          "Name the Hugging Face repository as USER/NAME (ASCII letters, "
                          "digits, '.', '_' or '-').")
    _key_id_from_private(Path(private_key), passphrase)  # a bad key fails before any write
    try:
        eval_results = json.loads((root / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{root / EVAL_FILE}: cannot read the results ({e})",
                          "Rebuild the bundle.") from None
    if not isinstance(eval_results, dict):
        raise ConfigError(f"{root / EVAL_FILE}: not a JSON object", "Rebuild the bundle.")
    pal = (stamped["persona"].get("files") or {}).get("pocketpal")
    pal = pal if pal and not path_escapes(root, pal) and (root / pal).is_file() else None
    # Scratch files that a crash in the middle of one of these writes left behind
    for rel in (README_FILE, MANIFEST_FILE, REPORT_FILE, signing.SIGNATURE_FILE,
                *([pal] if pal else [])):
        for leftover in (root / rel).parent.glob(f".{Path(rel).name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    card = _model_card(stamped, _readable(eval_results),
                       report_page=(root / REPORT_FILE).is_file())
    written = [README_FILE, MANIFEST_FILE]
    if pal:
        write_bytes_atomic(root / pal, personas.restamp_pocketpal(
            (root / pal).read_bytes(), hf_repo=hf_repo,
            model_file=_main_artifact(stamped["artifacts"])["path"]))
        written.append(pal)
    write_bytes_atomic(root / README_FILE, card.encode("utf-8"))
    write_json_atomic(root / MANIFEST_FILE, stamped)
    os.chmod(root / MANIFEST_FILE, 0o644)
    _refresh_report_sizes(root, written)
    resign_bundle(root, private_key, passphrase)
    return True


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
        signed, missing = signing.verify_signature_partial(root, public_key, optional=_is_gguf)
        if all(rel in missing for rel in signed if _is_gguf(rel)):
            raise _fail(f"{missing[0] if missing else 'no GGUF'}: no model file is present "
                        "(every signed GGUF is missing)", 7, missing[0] if missing else None,
                        "Download at least one quant of the bundle.")
    else:
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
