"""Write a signed bundle, and sign it again after an edit or a publish (``stamp_distribution``)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetune import keys, llamacpp, personas, report, signing
from edgetune.artifacts import Bundle, atomic_dir, write_bytes_atomic, write_json_atomic
from edgetune.bundle.card import eval_quants, main_artifact, model_card, readable_results
from edgetune.bundle.files import (EVAL_CHART_FILE, EVAL_FILE, EVAL_TABLE_FILE, MANIFEST_FILE,
                                   README_FILE, RECIPES_DIR, REPORT_FILE, REWARD_CHART_FILE, BundleInfo,
                                   BundleModel, gguf_file_name, is_gguf)
from edgetune.bundle.verify import (SCHEMA_VERSION, manifest_schema_error, path_escapes,
                                    read_manifest, verify_bundle)
from edgetune.errors import ConfigError, EdgetuneError, ModelError, VerificationError


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
    """Copy ``src`` to a new file ``dst`` in one pass, returning (sha256 hex, size).

    Not ``artifacts.atomic_file``: ``dst`` is new in ``atomic_dir``'s scratch folder, which is
    what makes the bundle appear whole, and hashing while copying reads a GGUF of gigabytes once.
    """
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


def _eval_summary(eval_results: dict) -> dict:
    """The scalar results, overall and per quant, for the manifest."""
    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}
    quants = {q: scalars(m) for q, m in eval_quants(eval_results).items()}
    return {**scalars(eval_results), "file": EVAL_FILE, **({"quants": quants} if quants else {})}


def _artifact(model: BundleModel, path: str, sha256: str, size: int) -> dict:
    art = {"path": path, "role": "model", "sha256": sha256, "size": size, "quant": model.quant,
           "architecture": model.architecture, "context_length": model.context_length,
           "ram_needed_bytes": model.ram_needed_bytes}
    if model.recipe is not None:  # only on a measured mix, so other manifests stay as they were
        art["recipe"] = _recipe_entry(path)
    return art


def _recipe_entry(model_path: str) -> dict:
    """Where a mix's recipe and imatrix sit in the bundle (``edgetune.mix.imatrix_name``: a GGUF
    by content, not by name), and the command that rebuilds it from the F16 GGUF."""
    from edgetune import mix

    recipe, imatrix = mix.recipe_name(), mix.imatrix_name()
    return {"tensor_types": f"{RECIPES_DIR}/{recipe}", "imatrix": f"{RECIPES_DIR}/{imatrix}",
            "base_ftype": mix.BASE_FTYPE,
            "llama_cpp": f"llama-cpp-python {llamacpp.LLAMA_CPP_PYTHON_VERSION}",
            "command": f"cd {RECIPES_DIR} && " + mix.rebuild_command(
                "../MODEL-F16.gguf", imatrix, recipe, f"../{model_path}")}


# Which app reads which persona file (manifest persona.files; SPEC.md "Personas").
_PERSONA_APPS = {personas.POCKETPAL_FILE: "pocketpal", personas.CHARACTER_CARD_FILE: "character_card_v2",
                 personas.LLMFARM_FILE: "llmfarm", "Modelfile": "ollama_modelfile",
                 "template": "ollama_template", "system": "ollama_system", "params": "ollama_params"}


def bundle_persona_files(info: BundleInfo, main_file: str) -> dict[str, bytes]:
    """Every app's persona file for ``info``, pointing at the GGUF ``main_file``."""
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
    # User input too: checked before copying
    persona_files = bundle_persona_files(info, main_file)
    eval_results = _finite(info.eval_results)
    readable = readable_results(eval_results)  # eval.md, eval.png, the card
    with atomic_dir(out, overwrite=overwrite) as tmp:
        os.chmod(tmp, 0o755)
        artifacts, recipe_files = [], []
        for m, name in zip(models, names):
            say(f"copying {m.quant}: {m.source} -> {name}")
            sha, size = _copy_hashed(Path(m.source), tmp / name)
            artifacts.append(_artifact(m, name, sha, size))
            if m.recipe is not None:
                entry = artifacts[-1]["recipe"]
                (tmp / RECIPES_DIR).mkdir(mode=0o755, exist_ok=True)
                _copy_hashed(Path(m.recipe), tmp / entry["tensor_types"])
                _copy_hashed(Path(m.imatrix), tmp / entry["imatrix"])
                recipe_files += [entry["tensor_types"], entry["imatrix"]]
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
        (tmp / README_FILE).write_text(model_card(manifest, readable), encoding="utf-8")
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
        # Last before signing, so that it can list every other file with its size.
        files = [(p.relative_to(tmp).as_posix(), p.stat().st_size) for p in tmp.rglob("*")
                 if p.is_file()]
        files = sorted([*files, (REPORT_FILE, None), (signing.SIGNATURE_FILE, None)])
        (tmp / REPORT_FILE).write_text(
            report.html_report(manifest, readable, info.training_log, files), encoding="utf-8")
        for name in [*names, *recipe_files, *persona_files, EVAL_FILE, EVAL_TABLE_FILE, EVAL_CHART_FILE,
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
                   for rel, digest in signed.items() if not is_gguf(rel))
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
    return model_card(manifest, readable_results(eval_results),
                      report_page=(root / REPORT_FILE).is_file())


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
    card = model_card(stamped, readable_results(eval_results),
                       report_page=(root / REPORT_FILE).is_file())
    written = [README_FILE, MANIFEST_FILE]
    if pal:
        write_bytes_atomic(root / pal, personas.restamp_pocketpal(
            (root / pal).read_bytes(), hf_repo=hf_repo,
            model_file=main_artifact(stamped["artifacts"])["path"]))
        written.append(pal)
    write_bytes_atomic(root / README_FILE, card.encode("utf-8"))
    write_json_atomic(root / MANIFEST_FILE, stamped)
    os.chmod(root / MANIFEST_FILE, 0o644)
    _refresh_report_sizes(root, written)
    resign_bundle(root, private_key, passphrase)
    return True
