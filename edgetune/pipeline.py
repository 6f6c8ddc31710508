"""The whole way: data -> train -> merge -> convert -> quantise -> evaluate -> bundle (signed).

``build`` wires the stage functions together; it never prints. Progress goes to a
``BuildEvents`` object (the CLI renders it with rich; tests record it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgetune import paths
from edgetune.artifacts import Adapter, Bundle
from edgetune.data import Columns, QARow, load_qa, split_qa
from edgetune.errors import OutputExistsError
from edgetune.profiles import QuantProfile
from edgetune.train import StepLog, TrainConfig

STAGES = ("data", "train", "merge", "convert", "quantise", "evaluate", "bundle")


@dataclass(frozen=True)
class Project:
    """What to build: the creator's data, base model, persona and training settings."""

    name: str
    data: Path
    base_model: str | None = None  # None: the built-in demo base model
    columns: Columns = Columns()
    system_prompt: str = ""
    greeting: str = "Hi! Ask me a question."
    suggested_prompts: tuple[str, ...] = ()  # shown as starters by phone apps (persona files)
    creator: str = "edgetune user"
    base_model_license: str = "other"
    version: str = "0.1.0"
    eval_fraction: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    sft_data: Path | None = None  # <think>-style examples for an SFT warm start before GRPO
    sft_format: str = "auto"
    sft_steps: int = 60


def demo_project() -> Project:
    from edgetune.demo import DEMO_DATA, DEMO_NAME, SYSTEM_PROMPT

    return Project(name=DEMO_NAME, data=DEMO_DATA, system_prompt=SYSTEM_PROMPT,
                   greeting="Hi! Ask me which number is larger, or a short word problem.",
                   suggested_prompts=("Which is larger, 9.9 or 9.11?",
                                      "It is 3 degrees and drops by 8. What is it now?"),
                   creator="edgetune demo", base_model_license="apache-2.0",
                   train=TrainConfig(system_prompt=SYSTEM_PROMPT))


class BuildEvents(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...
    def progress(self, name: str, done: int, total: int, detail: str = "") -> None: ...
    def note(self, message: str) -> None: ...
    def stage_done(self, name: str, summary: str = "") -> None: ...


class SilentEvents:
    def stage(self, name, detail=""): pass
    def progress(self, name, done, total, detail=""): pass
    def note(self, message): pass
    def stage_done(self, name, summary=""): pass


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    public_key: Path
    eval_report: dict


def build(project: Project, profile: QuantProfile, out: Path, *, key: Path | None = None,
          passphrase: str | None = None, overwrite: bool = False, resume: bool = False,
          accept_gate_failure: bool = False, events: BuildEvents | None = None) -> BuildResult:
    """Run every stage into ``out/<stage>`` and return the signed bundle.

    A quant that fails the profile's quality gates stops the build after evaluation
    (``GateFailure``) unless ``accept_gate_failure``, which the manifest then records.
    ``resume`` picks up an interrupted build: finished training stages are reused, a training
    stage with checkpoints continues from the newest one, later stages are redone.
    """
    import json

    from edgetune.bundle import BundleInfo, BundleModel, build_bundle
    from edgetune.convert import convert
    from edgetune.evaluate import evaluate
    from edgetune.gates import GateFailure
    from edgetune.merge import merge
    from edgetune.quantise import quantise
    from edgetune.report import write_reports

    ev = events or SilentEvents()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise OutputExistsError(f"{out} already exists",
                                hint="choose another --out directory, pass --resume to continue an "
                                     "interrupted build, or --overwrite to start again")
    # Bad input fails here, before anything is created (keys, models, output folders).
    ev.stage("data", str(project.data))
    rows = load_qa(project.data, project.columns).rows
    splits = split_qa(rows, eval_fraction=project.eval_fraction)
    sft_examples = None
    if project.sft_data is not None:
        from edgetune.sft_data import load_sft

        sft_examples = load_sft(project.sft_data, format=project.sft_format,
                                system_prompt=project.system_prompt).examples
    ev.stage_done("data", f"{len(splits.train)} train / {len(splits.eval)} held-out rows"
                  + (f", {len(sft_examples)} SFT examples" if sft_examples else ""))
    from edgetune.backends import preload_backend

    # Unsloth must load before transformers does.
    preload_backend(project.train.backend, project.base_model, project.train)
    private_key, public_key = _signing_key(key, ev)
    redo = overwrite or resume  # later stages are cheap and always redone on --resume

    base_model = project.base_model or build_demo_base(ev)
    init_adapter = None
    if sft_examples:
        sft_cfg = dataclasses.replace(project.train, method="sft", steps=project.sft_steps)
        ev.stage("sft", f"SFT warm start, {sft_cfg.steps} steps")
        sft = _train_stage(base_model, sft_examples, sft_cfg, out / "sft-adapter", None,
                           overwrite=overwrite, resume=resume, ev=ev, stage="sft")
        ev.stage_done("sft", f"{sft.steps} steps on {sft.effective_config.get('device')}")
        init_adapter = sft.path
    ev.stage("train", f"GRPO, {project.train.steps} steps")
    adapter = _train_stage(base_model, splits.train, project.train, out / "adapter", init_adapter,
                           overwrite=overwrite, resume=resume, ev=ev, stage="train")
    ev.stage_done("train", f"{adapter.steps} steps on {adapter.effective_config.get('device')}")
    overwrite = redo

    ev.stage("merge")
    merged = merge(adapter, out / "merged", overwrite=overwrite)
    ev.stage_done("merge", f"max weight change {merged.max_weight_delta:.2e}")

    from edgetune.hf import load_tokenizer

    tokenizer = load_tokenizer(merged.path)
    held_out = [_chat_text(tokenizer, project, r) for r in splits.eval]
    file_name = _file_stem(project.name)
    ev.stage("convert", "F16 GGUF + parity checks")
    f16 = convert(merged.path, out / "gguf", name=file_name, parity_texts=held_out,
                  overwrite=overwrite)
    ev.stage_done("convert", f"logit KLD {f16.logit_parity['mean_kld']:.1e}, "
                             f"top-1 {f16.logit_parity['top1']:.1%}")

    ev.stage("quantise", ", ".join(profile.quants))
    # The domain imatrix is calibrated on the calibration split, never on the held-out rows.
    calibration = [_chat_text(tokenizer, project, r) for r in splits.calibration]
    quants = quantise(f16, profile.quants, out / "quants", name=file_name, overwrite=overwrite,
                      imatrix_texts=calibration, imatrix_quants=profile.imatrix_quants,
                      on_progress=lambda q, i, n: ev.progress("quantise", i, n, q))
    ev.stage_done("quantise", ", ".join(f"{q}{' (imatrix)' if q in quants.without_imatrix else ''}"
                                        for q in quants.files))

    ev.stage("evaluate", f"{len(held_out)} held-out rows")
    try:
        report = evaluate(f16, quants, held_out, out / "eval",
                          context_length=profile.context_length, n_ctx=profile.eval_context,
                          overwrite=overwrite, qa_rows=splits.eval,
                          system_prompt=project.system_prompt,
                          answer_format=project.train.answer_format, profile=profile,
                          accept_gate_failure=accept_gate_failure,
                          on_progress=lambda q, i, n: ev.progress("evaluate", i, n, q))
    except GateFailure:  # the report is written; eval.md and eval.png show what failed
        write_reports(out / "eval", json.loads((out / "eval" / "eval.json").read_text()))
        raise
    eval_results = json.loads((report.path / report.file).read_text())
    write_reports(report.path, eval_results)
    ev.stage_done("evaluate")

    ev.stage("bundle", "manifest, model card, signature")
    info = BundleInfo(
        name=file_name,
        bundle_id=_bundle_id(project.name),
        version=project.version,
        creator_name=project.creator,
        base_model=_base_name(base_model),
        base_model_license=project.base_model_license,
        chat_template=tokenizer.chat_template or "",
        stop_strings=tuple(s for s in [tokenizer.eos_token] if s),
        default_context=profile.context_length,
        system_prompt=project.system_prompt,
        greeting=project.greeting,
        suggested_prompts=project.suggested_prompts,
        bos_token=tokenizer.bos_token,
        training={"method": adapter.method, "backend": adapter.backend, "steps": adapter.steps,
                  "dataset_rows": len(splits.train), "rewards": list(project.train.rewards),
                  "effective_config": adapter.effective_config,
                  **({"warm_start": {"method": "sft", "steps": project.sft_steps,
                                     "examples": len(sft_examples)}} if sft_examples else {})},
        eval_results=eval_results,
    )
    models = [BundleModel(quant=q, source=quants.gguf(q), architecture=f16.architecture,
                          context_length=profile.context_length,
                          ram_needed_bytes=eval_results["quants"][q]["ram_needed_bytes"])
              for q in quants.files]
    bundle = build_bundle(out / "bundle", info, models, private_key=private_key,
                          passphrase=passphrase, overwrite=overwrite)
    ev.stage_done("bundle", str(bundle.path))
    return BuildResult(bundle=bundle, public_key=public_key, eval_report=eval_results)


def _train_stage(base_model: str, data, config: TrainConfig, out: Path, init_adapter: Path | None, *,
                 overwrite: bool, resume: bool, ev: BuildEvents, stage: str) -> Adapter:
    from edgetune.artifacts import ARTIFACT_FILE
    from edgetune.train import checkpoint_dir, last_checkpoint, train

    if resume and not overwrite and (out / ARTIFACT_FILE).is_file():
        ev.note(f"{stage}: reusing the finished adapter in {out}")
        return Adapter.load(out)
    continuing = resume and last_checkpoint(checkpoint_dir(out)) is not None
    return train(base_model, data, config, out, init_adapter=init_adapter, resume=continuing,
                 overwrite=overwrite or resume,
                 on_step=lambda s: ev.progress(stage, s.step, s.total, step_detail(s)),
                 on_note=ev.note)


def _signing_key(key: Path | None, ev: BuildEvents) -> tuple[Path, Path]:
    """The creator's key pair; the default one is created on first use (never inside a bundle)."""
    from edgetune.errors import KeyFileError
    from edgetune.signing import generate_keypair

    if key is not None:
        key = Path(key)
        public = key.with_suffix(".pub")
        if not key.is_file():
            raise KeyFileError(f"signing key {key} not found",
                               hint="create one with `edgetune keys new`")
        return key, public
    default = paths.keys_dir() / "edgetune.key"
    if not default.is_file():
        pair = generate_keypair(paths.keys_dir())
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


def _chat_text(tokenizer, project: Project, row: QARow) -> str:
    """A held-out conversation as the model sees it: system, question, reference answer."""
    return tokenizer.apply_chat_template(held_out_messages(project.system_prompt, row),
                                         tokenize=False)


def held_out_messages(system_prompt: str, row: QARow) -> list[dict]:
    from edgetune.demo.model import formatted_answer

    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": row.question},
                       {"role": "assistant", "content": formatted_answer(row)}]


def step_detail(step: StepLog) -> str:
    m = step.metrics
    if "reward" not in m:
        return f"loss {float(m.get('loss', 0)):.3f}"
    per_fn = " ".join(f"{k.split('/')[1][:7]} {float(v):.2f}" for k, v in m.items()
                      if k.startswith("rewards/") and k.endswith("/mean"))
    return (f"reward {float(m['reward']):.2f} ({per_fn}), "
            f"zero-std {float(m.get('frac_reward_zero_std', 0)):.2f}")


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
