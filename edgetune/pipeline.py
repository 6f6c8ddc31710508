"""The whole way: data -> train -> merge -> convert -> quantise -> evaluate -> bundle (signed).

``build`` wires the stage functions together; it never prints. Progress goes to a
``BuildEvents`` object (the CLI renders it with rich; tests record it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.artifacts import Adapter, Bundle
from edgetune.data import Columns, QARow, load_qa, split_qa
from edgetune.errors import OutputExistsError
from edgetune.conversations import conversation_text
from edgetune.events import BuildEvents, SilentEvents, step_detail
from edgetune.profiles import QuantProfile
from edgetune.project import Project, demo_project
from edgetune.training.config import TrainConfig



@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle | None  # None when the build stopped early (--to)
    public_key: Path
    eval_report: dict
    stopped_after: str | None = None
    report: Path | None = None  # report.html beside the bundle (a copy of the bundle's own)


def build(project: Project, profile: QuantProfile, out: Path, *, key: Path | None = None,
          passphrase: str | None = None, overwrite: bool = False, resume: bool = False,
          accept_gate_failure: bool = False, events: BuildEvents | None = None,
          per_target: bool = False, from_stage: str | None = None,
          to_stage: str | None = None) -> BuildResult:
    """Run every stage into ``out/<stage>`` and return the signed bundle.

    ``from_stage`` redoes that stage and every later one even if up to date; ``to_stage`` stops
    after that stage. ``per_target``: quantise, evaluate and bundle go to ``out/targets/<profile>/``, so builds
    of several targets into one ``out`` share training, merge and conversion.

    Incremental (``edgetune.stages``): a stage whose inputs are unchanged since it last
    completed is reused, so a rebuild with nothing changed loads no model, and a new target
    reruns only what depends on it. ``overwrite`` redoes every stage. ``resume`` continues an
    interrupted training stage from its newest checkpoint. A quant that fails the profile's
    quality gates stops the build after evaluation (``GateFailure``) unless
    ``accept_gate_failure``, which the manifest then records.
    """
    from edgetune import stages

    ev = events or SilentEvents()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (overwrite or resume) \
            and not (out / stages.STATE_DIR).is_dir():
        raise OutputExistsError(f"{out} already exists",
                                hint="choose another --out directory, pass --resume to continue an "
                                     "interrupted build, or --overwrite to start again")
    # Bad input fails here, before anything is created (keys, models, output folders).
    ev.stage("data", str(project.data))
    inputs = _read_inputs(project)
    ev.stage_done("data", f"{len(inputs.splits.train)} train / {len(inputs.splits.eval)} "
                          "held-out rows" + (f", {len(inputs.sft_examples)} SFT examples"
                                             if inputs.sft_examples else ""))
    private_key, public_key = _signing_key(key, ev)
    with stages.build_lock(out):
        if removed := stages.remove_leftovers(out):
            ev.note(f"removed {len(removed)} unfinished folder(s) of an interrupted build")
        plans = plan_build(project, profile, out, inputs=inputs, public_key=public_key,
                           accept_gate_failure=accept_gate_failure, per_target=per_target)
        return _run_stages(project, profile, out, plans, inputs, private_key=private_key,
                           public_key=public_key, passphrase=passphrase, force=overwrite,
                           resume=resume, accept_gate_failure=accept_gate_failure, ev=ev,
                           from_stage=from_stage, to_stage=to_stage)


@dataclass(frozen=True)
class BuildInputs:
    rows: tuple
    splits: Any
    sft_examples: tuple | None


def _read_inputs(project: Project) -> BuildInputs:
    rows = load_qa(project.data, project.columns).rows
    splits = split_qa(rows, eval_fraction=project.eval_fraction)
    sft_examples = None
    if project.sft_data is not None:
        from edgetune.sft_data import load_sft

        sft_examples = tuple(load_sft(project.sft_data, format=project.sft_format,
                                      system_prompt=project.system_prompt).examples)
    return BuildInputs(rows=rows, splits=splits, sft_examples=sft_examples)


def plan_build(project: Project, profile: QuantProfile, out: Path, *,
               inputs: BuildInputs | None = None, public_key: Path | None = None,
               accept_gate_failure: bool = False, per_target: bool = False) -> list:
    """Every stage with its output folder and input key; loads no model (``edgetune status``)."""
    import edgetune
    from edgetune import stages
    from edgetune.training.checkpoints import data_digest

    inputs = inputs or _read_inputs(project)
    out = Path(out)
    if project.base_model is None:
        from edgetune.demo.model import RECIPE_VERSION

        base = {"demo_recipe": RECIPE_VERSION}  # built deterministically from the recipe
    elif Path(project.base_model).expanduser().is_dir():
        base = stages.model_fingerprint(Path(project.base_model).expanduser())
    else:
        base = {"hub_id": project.base_model}
    train_tools = stages.tool_versions(stages.TRAIN_TOOLS)
    llama_tools = stages.tool_versions(stages.LLAMA_TOOLS)
    persona = {"system_prompt": project.system_prompt}
    plans: list = []

    def add(name: str, folder: str, **fields) -> str:
        upstream = plans[-1].key if plans else None
        entries = {"upstream": upstream, "edgetune": edgetune.__version__, **fields}
        plan = stages.StagePlan(name, out / folder, stages.digest({"stage": name, **entries}),
                                {k: stages.digest(v) for k, v in entries.items()})
        plans.append(plan)
        return plan.key

    train_config = dataclasses.asdict(project.train)
    train_config.pop("checkpoint_every")  # how often to save does not change the adapter
    if inputs.sft_examples:
        add("sft", "sft-adapter", base=base, data=data_digest(inputs.sft_examples),
            settings=[train_config, project.sft_steps], tools=train_tools)
    add("train", "adapter", base=base, data=data_digest(inputs.splits.train),
        settings=train_config, tools=train_tools)
    add("merge", "merged", tools=train_tools)
    add("convert", "gguf", parity=[data_digest(inputs.splits.eval), persona], tools=llama_tools)
    target = f"targets/{profile.name}/" if per_target else ""
    add("quantise", f"{target}quants", quants=[list(profile.quants), list(profile.imatrix_quants)],
        calibration=[data_digest(inputs.splits.calibration), persona], tools=llama_tools)
    add("evaluate", f"{target}eval", target=dataclasses.asdict(profile),
        held_out=[data_digest(inputs.splits.eval), persona, project.train.answer_format],
        accept_gate_failure=accept_gate_failure, tools=llama_tools)
    key_id = (stages.digest(Path(public_key).read_bytes())
              if public_key and Path(public_key).is_file() else None)
    add("bundle", f"{target}bundle", project={f.name: getattr(project, f.name) for f in
                                     dataclasses.fields(project)
                                     if f.name not in ("train", "data", "sft_data")},
        key=key_id, layout=2)  # 2: with report.html and reward.png; older bundles are stale
    return plans


def _run_stages(project, profile, out, plans, inputs, *, private_key, public_key, passphrase,
                force, resume, accept_gate_failure, ev, from_stage=None,
                to_stage=None) -> BuildResult:
    import json

    from edgetune import stages
    from edgetune.artifacts import Adapter, EvalReport, GgufModel, MergedModel, QuantizedModels
    from edgetune.artifacts import Bundle as BundleArtifact

    stamps = stages.Stamps(out)
    plan = {p.name: p for p in plans}
    rebuilt = False  # once a stage reruns, every later one does (its input changed)

    def reuse(name: str) -> bool:
        nonlocal rebuilt
        forced = from_stage is not None and stages.STAGES.index(name) >= \
            stages.STAGES.index(from_stage)
        if not force and not forced and not rebuilt and stamps.fresh(plan[name]):
            return True
        rebuilt = True
        stamps.clear(plan[name])
        return False

    splits, sft_examples = inputs.splits, inputs.sft_examples
    need_model = any(not stamps.fresh(p) for p in plans) or force or bool(from_stage)
    if need_model:
        from edgetune.training.backends import preload_backend

        # Unsloth must load before transformers does.
        preload_backend(project.train.backend, project.base_model, project.train)
    base_model = project.base_model or (build_demo_base(ev) if need_model else "")

    init_adapter = None
    if sft_examples:
        ev.stage("sft", f"SFT warm start, {project.sft_steps} steps")
        if reuse("sft"):
            sft = Adapter.load(plan["sft"].folder)
            ev.stage_done("sft", "up to date")
        else:
            sft_cfg = dataclasses.replace(project.train, method="sft", steps=project.sft_steps)
            sft = _train_stage(base_model, sft_examples, sft_cfg, plan["sft"].folder, None,
                               resume=resume, ev=ev, stage="sft")
            stamps.write(plan["sft"])
            ev.stage_done("sft", f"{sft.steps} steps on {sft.effective_config.get('device')}")
        init_adapter = sft.path

    ev.stage("train", f"GRPO, {project.train.steps} steps")
    if reuse("train"):
        adapter = Adapter.load(plan["train"].folder)
        ev.stage_done("train", "up to date")
    else:
        adapter = _train_stage(base_model, splits.train, project.train, plan["train"].folder,
                               init_adapter, resume=resume, ev=ev, stage="train")
        stamps.write(plan["train"])
        ev.stage_done("train", f"{adapter.steps} steps on {adapter.effective_config.get('device')}")

    if to_stage == "train":
        return BuildResult(bundle=None, public_key=public_key, eval_report={},
                           stopped_after="train")

    ev.stage("merge")
    if reuse("merge"):
        merged = MergedModel.load(plan["merge"].folder)
        ev.stage_done("merge", "up to date")
    else:
        from edgetune.merge import merge

        merged = merge(adapter, plan["merge"].folder, overwrite=True)
        stamps.write(plan["merge"])
        ev.stage_done("merge", f"max weight change {merged.max_weight_delta:.2e}")

    if to_stage == "merge":
        return BuildResult(bundle=None, public_key=public_key, eval_report={},
                           stopped_after="merge")

    texts = _TextsFor(merged.path, project, splits)
    file_name = _file_stem(project.name)
    ev.stage("convert", "F16 GGUF + parity checks")
    if reuse("convert"):
        f16 = GgufModel.load(plan["convert"].folder)
        ev.stage_done("convert", "up to date")
    else:
        from edgetune.convert import convert

        f16 = convert(merged.path, plan["convert"].folder, name=file_name,
                      parity_texts=texts.held_out(), overwrite=True)
        stamps.write(plan["convert"])
        ev.stage_done("convert", f"logit KLD {f16.logit_parity['mean_kld']:.1e}, "
                                 f"top-1 {f16.logit_parity['top1']:.1%}")

    if to_stage == "convert":
        return BuildResult(bundle=None, public_key=public_key, eval_report={},
                           stopped_after="convert")

    ev.stage("quantise", ", ".join(profile.quants))
    if reuse("quantise"):
        quants = QuantizedModels.load(plan["quantise"].folder)
        ev.stage_done("quantise", "up to date")
    else:
        from edgetune.quantise import quantise

        # The domain imatrix is calibrated on the calibration split, never on held-out rows.
        quants = quantise(f16, profile.quants, plan["quantise"].folder, name=file_name,
                          overwrite=True, imatrix_texts=texts.calibration(),
                          imatrix_quants=profile.imatrix_quants,
                          on_progress=lambda q, i, n: ev.progress("quantise", i, n, q))
        stamps.write(plan["quantise"])
        ev.stage_done("quantise", ", ".join(
            f"{q}{' (imatrix)' if q in quants.without_imatrix else ''}" for q in quants.files))

    if to_stage == "quantise":
        return BuildResult(bundle=None, public_key=public_key, eval_report={},
                           stopped_after="quantise")

    ev.stage("evaluate", f"{len(splits.eval)} held-out rows")
    if reuse("evaluate"):
        report = EvalReport.load(plan["evaluate"].folder)
        ev.stage_done("evaluate", "up to date")
    else:
        from edgetune.evaluate import evaluate
        from edgetune.gates import GateFailure
        from edgetune.report import write_reports

        folder = plan["evaluate"].folder
        try:
            report = evaluate(f16, quants, texts.held_out(), folder,
                              context_length=profile.context_length, n_ctx=profile.eval_context,
                              overwrite=True, qa_rows=splits.eval,
                              system_prompt=project.system_prompt,
                              answer_format=project.train.answer_format, profile=profile,
                              accept_gate_failure=accept_gate_failure,
                              on_progress=lambda q, i, n: ev.progress("evaluate", i, n, q))
        except GateFailure:  # the report is written; eval.md and eval.png show what failed
            write_reports(folder, json.loads((folder / "eval.json").read_text()))
            raise
        write_reports(report.path, json.loads((report.path / report.file).read_text()))
        stamps.write(plan["evaluate"])
        ev.stage_done("evaluate")
    eval_results = json.loads((report.path / report.file).read_text())

    if to_stage == "evaluate":
        return BuildResult(bundle=None, public_key=public_key, eval_report={},
                           stopped_after="evaluate")
    ev.stage("bundle", "manifest, model card, report, signature")
    if reuse("bundle"):
        folder = plan["bundle"].folder
        manifest = json.loads((folder / "edgetune.json").read_text())
        bundle = BundleArtifact(path=folder, bundle_id=manifest["bundle_id"],
                                version=manifest["version"], key_id=manifest["creator"]["key_id"])
        ev.stage_done("bundle", f"{folder} (up to date)")
    else:
        bundle = _bundle_stage(project, profile, plan["bundle"].folder, adapter, f16, quants,
                               eval_results, splits, sft_examples, texts.tokenizer(), base_model,
                               file_name, private_key, passphrase)
        stamps.write(plan["bundle"])
        ev.stage_done("bundle", str(bundle.path))
    return BuildResult(bundle=bundle, public_key=public_key, eval_report=eval_results,
                       report=_copy_report(bundle.path))


class _TextsFor:
    """Held-out and calibration conversations, rendered only when a stage needs them (loading
    the tokenizer imports transformers, which an up-to-date rebuild never does)."""

    def __init__(self, model_dir: Path, project: Project, splits):
        self.model_dir, self.project, self.splits = model_dir, project, splits
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            from edgetune.hf import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def held_out(self) -> list[str]:
        return [conversation_text(self.tokenizer(), self.project.system_prompt, r) for r in self.splits.eval]

    def calibration(self) -> list[str]:
        return [conversation_text(self.tokenizer(), self.project.system_prompt, r) for r in self.splits.calibration]


def _bundle_stage(project, profile, folder, adapter, f16, quants, eval_results, splits,
                  sft_examples, tokenizer, base_model, file_name, private_key, passphrase):
    from edgetune.bundle import BundleInfo, BundleModel, build_bundle
    from edgetune.report import read_training_log

    info = BundleInfo(
        name=file_name,
        bundle_id=_bundle_id(project.name),
        version=project.version,
        creator_name=project.creator,
        base_model=_base_name(base_model or "demo-base"),
        base_model_license=project.base_model_license,
        chat_template=tokenizer.chat_template or "",
        stop_strings=tuple(s for s in [tokenizer.eos_token] if s),
        default_context=profile.context_length,
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
                  "dataset_rows": len(splits.train), "rewards": list(project.train.rewards),
                  "effective_config": adapter.effective_config,
                  **({"warm_start": {"method": "sft", "steps": project.sft_steps,
                                     "examples": len(sft_examples)}} if sft_examples else {})},
        eval_results=eval_results,
        training_log=read_training_log(adapter.path / adapter.log_file),
    )
    models = [BundleModel(quant=q, source=quants.gguf(q), architecture=f16.architecture,
                          context_length=profile.context_length,
                          ram_needed_bytes=eval_results["quants"][q]["ram_needed_bytes"])
              for q in quants.files]
    return build_bundle(folder, info, models, private_key=private_key, passphrase=passphrase,
                        overwrite=True)


def _copy_report(bundle: Path) -> Path:
    """Copy the bundle's report.html and its two charts beside the bundle folder (``out/``, or
    ``out/targets/<profile>/``), where a creator looks first. Copied after every build, reused
    bundle or not, so the copies are always the bundle's own (still signed inside it)."""
    from edgetune.bundle import EVAL_CHART_FILE, REPORT_FILE, REWARD_CHART_FILE

    for name in (REWARD_CHART_FILE, EVAL_CHART_FILE, REPORT_FILE):  # the page last
        scratch = bundle.parent / f".{name}.tmp"
        try:
            shutil.copyfile(bundle / name, scratch)
            os.chmod(scratch, 0o644)
            os.replace(scratch, bundle.parent / name)
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
    return bundle.parent / REPORT_FILE


def _train_stage(base_model: str, data, config: TrainConfig, out: Path, init_adapter: Path | None, *,
                 resume: bool, ev: BuildEvents, stage: str) -> Adapter:
    from edgetune.training.checkpoints import checkpoint_dir, last_checkpoint
    from edgetune.training.trainer import train

    continuing = resume and last_checkpoint(checkpoint_dir(out)) is not None
    return train(base_model, data, config, out, init_adapter=init_adapter, resume=continuing,
                 overwrite=True,
                 on_step=lambda s: ev.progress(stage, s.step, s.total, step_detail(s)),
                 on_note=ev.note)


def _signing_key(key: Path | None, ev: BuildEvents) -> tuple[Path, Path]:
    """The creator's key pair; the default one is created on first use (never inside a bundle)."""
    from edgetune.errors import KeyFileError
    from edgetune.keys import default_private_key, generate_keypair

    if key is not None:
        key = Path(key)
        public = key.with_suffix(".pub")
        if not key.is_file():
            raise KeyFileError(f"signing key {key} not found",
                               hint="create one with `edgetune keys new`")
        return key, public
    default = default_private_key()
    if not default.is_file():
        pair = generate_keypair(default.parent)
        ev.note(f"created a signing key pair: {pair.private_key} (keep it safe), {pair.public_key}")
    return default, default.with_suffix(".pub")


def build_demo_base(ev: BuildEvents) -> str:
    from edgetune.demo.model import PRETRAIN_STEPS, demo_base_model

    ev.stage("base", "building the demo base model (first run only)")
    if "unsloth" in sys.modules:
        # Unsloth replaces the model classes' forward with CUDA kernels in this process; the
        # demo base is pretrained on CPU (bit-for-bit the same model everywhere) in a clean one.
        subprocess.run([sys.executable, "-c", "from edgetune.demo.model import demo_base_model; "
                        "demo_base_model()"], check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    path = demo_base_model(on_step=lambda s, n, loss: ev.progress("base", s, n, f"loss {loss:.3f}"))
    ev.stage_done("base", f"demo model ({PRETRAIN_STEPS} pretraining steps) at {path}")
    return str(path)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _bundle_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:48] or "model"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _base_name(base_model: str) -> str:
    path = Path(base_model)
    return "edgetune-demo-base (built locally)" if "demo-base" in path.name else base_model


def held_out_rows(data: Path | None, columns: Columns = Columns(), *,
                  all_rows: bool = False) -> tuple[QARow, ...]:
    """The rows ``build`` holds out of ``data`` (default: the demo's), or every row."""
    project = demo_project()
    rows = load_qa(data or project.data, columns).rows
    return rows if all_rows else split_qa(rows, eval_fraction=project.eval_fraction).eval
