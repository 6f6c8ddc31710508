"""The build's last stage: the signed bundle, described from what the earlier stages made.

Split from ``edgetune.pipeline`` (which runs it): here is what the manifest and model card say
about the base, the training and the warm start.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from edgetune import turns
from edgetune.artifacts import Bundle, atomic_file


def run(b, folder: Path) -> Bundle:
    """BundleInfo from what the build made (``b``: pipeline's build state), then the signed bundle."""
    from edgetune.bundle import BundleInfo, BundleModel, build_bundle
    from edgetune.report import read_training_log

    project, adapter, quants, tokenizer = b.project, b.made["train"], b.made["quantise"], b.tokenizer()
    sft_examples, eval_results = b.inputs.sft_examples, b.eval_results()
    info = BundleInfo(
        name=b.file_name,
        bundle_id=_bundle_id(project.name),
        version=project.version,
        creator_name=project.creator,
        base_model=_base_name(b.base_model, project.base_model_id),
        base_model_license=project.base_model_license,
        chat_template=tokenizer.chat_template or "",
        stop_strings=turns.stop_strings(tokenizer),  # the template's end of turn, then EOS
        default_context=b.profile.context_length,
        system_prompt=project.system_prompt,
        greeting=project.greeting,
        suggested_prompts=project.suggested_prompts,
        persona_name=project.persona_name,
        persona_description=project.persona_description,
        license_terms=project.license_terms,
        bos_token=tokenizer.bos_token,
        hf_repo=project.publish.repo if project.publish else None,
        gated=bool(project.publish and project.publish.gated),  # False, "auto" or "manual"
        training={"method": adapter.method, "backend": adapter.backend, "steps": adapter.steps,
                  "dataset_rows": len(b.inputs.splits.train),
                  "rewards": list(project.train.rewards),
                  "effective_config": adapter.effective_config,
                  **({"warm_start": _warm_start_record(b)} if sft_examples else {})},
        eval_results=eval_results,
        training_log=read_training_log(adapter.path / adapter.log_file),
    )
    models = [BundleModel(quant=q, source=quants.gguf(q), architecture=b.made["convert"].architecture,
                          context_length=b.profile.context_length,
                          ram_needed_bytes=eval_results["quants"][q]["ram_needed_bytes"],
                          **_recipe(quants, q))
              for q in quants.files if ships(eval_results, q)]
    return build_bundle(folder, info, models, private_key=b.private_key,
                        passphrase=b.passphrase, overwrite=True)

def ships(eval_results: dict, quant: str) -> bool:
    """Every quant the profile builds ships, except a measured mix that did not beat Q4_K_M
    (its evaluation says why; edgetune.mix.judge)."""
    from edgetune.mix import MIX

    return quant != MIX or bool(eval_results["quants"][quant].get("mix", {}).get("ships"))


def _recipe(quants, quant: str) -> dict:
    recipe = quants.recipes.get(quant)
    if not recipe:
        return {}
    return {"recipe": quants.path / recipe["tensor_types"], "imatrix": quants.path / recipe["imatrix"]}


def load_bundle(folder: Path) -> Bundle:
    manifest = json.loads((folder / "edgetune.json").read_text())
    return Bundle(path=folder, bundle_id=manifest["bundle_id"], version=manifest["version"],
                  key_id=manifest["creator"]["key_id"])

def copy_report(bundle: Path) -> Path:
    """Copy the bundle's report.html and its two charts beside the bundle folder (``out/``, or
    ``out/targets/<profile>/``), where a creator looks first. Copied after every build, reused
    bundle or not, so the copies are always the bundle's own (still signed inside it)."""
    from edgetune.bundle import EVAL_CHART_FILE, REPORT_FILE, REWARD_CHART_FILE

    for name in (REWARD_CHART_FILE, EVAL_CHART_FILE, REPORT_FILE):  # the page last
        with atomic_file(bundle.parent / name) as scratch:
            shutil.copyfile(bundle / name, scratch)
    return bundle.parent / REPORT_FILE

def _warm_start_record(b) -> dict:
    sft = b.made["sft"]
    record = {"method": "sft", "steps": sft.steps, "examples": len(b.inputs.sft_examples),
              "data": "the training rows in the answer format" if b.inputs.warm_start
              else "the project's sft_data"}
    return {**record, **({"probe": sft.effective_config["probe"]}
                         if "probe" in sft.effective_config else {})}

def _base_name(base_model: str, hub_id: str | None) -> str:
    """The Hub id when known (the card links it), else what the folder is, never its path."""
    if hub_id:
        return hub_id
    path = Path(base_model)
    if "demo-base" in path.name:
        return "edgetune-demo-base (built locally)"
    return f"{path.name} (a local model folder)" if path.is_dir() else base_model

def _bundle_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:48] or "model"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
