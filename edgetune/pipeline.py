"""The whole way: data -> train -> merge -> convert -> quantise -> evaluate -> bundle (signed).

``build`` runs the stage functions in the order of ``STAGE_TABLE``, each taking the typed
artifacts of the stages before it; it never prints. Progress goes to a ``BuildEvents`` object
(the CLI renders it with rich; tests record it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune import bundle_stage, llamacpp, preflight, stages
from edgetune.artifacts import (Adapter, Bundle, EvalReport, GgufModel, MergedModel,
                                QuantizedModels)
from edgetune.data import Columns, QARow, load_qa, split_qa
from edgetune.errors import OutputExistsError
from edgetune.conversations import conversation_text
from edgetune.events import BuildEvents, SilentEvents, step_detail
from edgetune.profiles import QuantProfile
from edgetune.project import Project, demo_project
from edgetune.stages import BuildInputs
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
          to_stage: str | None = None, verbose: bool = False) -> BuildResult:
    """Run every stage into ``out/<stage>`` and return the signed bundle.

    ``from_stage`` redoes that stage and every later one even if up to date; ``to_stage`` stops
    after that stage. ``per_target``: quantise, evaluate and bundle go to ``out/targets/<profile>/``, so builds
    of several targets into one ``out`` share training, merge and conversion.

    Incremental (``edgetune.stages``): a stage whose inputs are unchanged since it last
    completed is reused, so a rebuild with nothing changed loads no model, and a new target
    reruns only what depends on it. ``overwrite`` redoes every stage. ``resume`` continues an
    interrupted training stage from its newest checkpoint. A quant that fails the profile's
    quality gates stops the build after evaluation (``GateFailure``) unless
    ``accept_gate_failure``, which the manifest then records. llama.cpp's own log lines go to
    ``out/.edgetune/build.log``, or with ``verbose`` to stderr.
    """
    ev = events or SilentEvents()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (overwrite or resume) \
            and not (out / stages.STATE_DIR).is_dir():
        raise OutputExistsError(f"{out} already exists",
                                hint="choose another --out directory, pass --resume to continue an "
                                     "interrupted build, or --overwrite to start again")
    # Bad input fails here, before anything is created (keys, models, output folders).
    preflight.check_output(out)
    base = preflight.check_base(project)
    preflight.check_space(out, base, profile.quants)
    ev.stage("data", str(project.data))
    inputs = stages.read_inputs(project)
    for dropped in inputs.dropped[:5]:
        ev.note(dropped)
    if len(inputs.dropped) > 5:
        ev.note(f"... and {len(inputs.dropped) - 5} more repeated rows dropped")
    ev.stage_done("data", f"{len(inputs.splits.train)} train / {len(inputs.splits.eval)} "
                          "held-out rows" + (f", {len(inputs.sft_examples)} SFT examples"
                                             if inputs.sft_examples else ""))
    signs = to_stage in (None, "bundle")  # a build stopped earlier needs no key, makes none
    if signs:  # the default key too: a broken one is found now, not after training
        preflight.check_key(key, passphrase)
    prepared = preflight.prepare(project, inputs, base, on_note=ev.note)
    project, inputs = prepared.project, prepared.inputs
    if prepared.fitted is not None:
        ev.note("training settings: " + "; ".join(prepared.fitted.describe()))
    private_key, public_key = _signing_key(key, ev) if signs else _key_paths(key)
    with stages.build_lock(out):
        if removed := stages.remove_leftovers(out):
            ev.note(f"removed {len(removed)} unfinished folder(s) of an interrupted build")
        plans = stages.plan_build(project, profile, out, inputs=inputs, public_key=public_key,
                                  accept_gate_failure=accept_gate_failure, per_target=per_target)
        b = _Build(project, profile, inputs, private_key=private_key, passphrase=passphrase,
                   resume=resume, accept_gate_failure=accept_gate_failure, ev=ev,
                   log=None if verbose else out / stages.STATE_DIR / "build.log")
        if b.log is not None:
            with b.log.open("a", encoding="utf-8") as log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} build of {profile.name}\n")
        return _run_stages(b, out, plans, public_key=public_key, force=overwrite,
                           from_stage=from_stage, to_stage=to_stage)


def plan_build(project: Project, profile: QuantProfile, out: Path, *,
               public_key: Path | None = None, per_target: bool = False) -> list:
    """The stages a build of ``project`` would run, with their keys (``edgetune status``): the
    same preflight and fitted settings as ``build``, no model loaded."""
    inputs = stages.read_inputs(project)
    prepared = preflight.prepare(project, inputs, preflight.check_base(project))
    return stages.plan_build(prepared.project, profile, out, inputs=prepared.inputs,
                             public_key=public_key, per_target=per_target)


class _Build:
    """What the stages of one build share: its settings and the artifacts made so far."""

    def __init__(self, project: Project, profile: QuantProfile, inputs: BuildInputs, *,
                 private_key: Path, passphrase: str | None, resume: bool,
                 accept_gate_failure: bool, ev: BuildEvents, log: Path | None):
        self.project, self.profile, self.inputs, self.ev = project, profile, inputs, ev
        self.private_key, self.passphrase, self.resume = private_key, passphrase, resume
        self.accept_gate_failure, self.log = accept_gate_failure, log  # log: llama.cpp's lines
        self.base_model, self.file_name = "", _file_stem(project.name)
        self.made: dict[str, Any] = {}  # stage name -> its artifact
        self._tokenizer = None

    def tokenizer(self):
        """The merged model's tokenizer, loaded only when a stage needs text (it imports
        transformers, which an up-to-date rebuild never does)."""
        if self._tokenizer is None:
            from edgetune.hf import load_tokenizer

            self._tokenizer = load_tokenizer(self.made["merge"].path)
        return self._tokenizer

    def conversations(self, rows) -> list[str]:
        return [conversation_text(self.tokenizer(), self.project.system_prompt, r) for r in rows]

    def eval_results(self) -> dict:
        report = self.made["evaluate"]
        return json.loads((report.path / report.file).read_text())

    def progress(self, stage: str) -> Callable[[str, int, int], None]:
        return lambda what, i, n: self.ev.progress(stage, i, n, what)

    def train(self, stage: str, data, config: TrainConfig, folder: Path,
              init_adapter: Path | None) -> Adapter:
        from edgetune.training.checkpoints import checkpoint_dir, last_checkpoint
        from edgetune.training.trainer import train

        continuing = self.resume and last_checkpoint(checkpoint_dir(folder)) is not None
        return train(self.base_model, data, config, folder, init_adapter=init_adapter,
                     resume=continuing, overwrite=True,
                     on_step=lambda s: self.ev.progress(stage, s.step, s.total, step_detail(s)),
                     on_note=self.ev.note)


def _run_sft(b: _Build, folder: Path) -> Adapter:
    inputs, train = b.inputs, b.project.train
    if inputs.warm_start == "auto":
        from edgetune.training.warmstart import probe_format

        from edgetune.hf import resolve_model

        probe = probe_format(resolve_model(b.base_model), inputs.splits.train,
                             system_prompt=b.project.system_prompt,
                             answer_format=train.answer_format,
                             max_new_tokens=train.max_completion_length,
                             temperature=train.temperature, seed=train.seed)
        found = f"the base model wrote the answer format in {probe.strict:.0%} of " \
                f"{probe.samples} sampled answers"
        if not probe.needs_warm_start:
            b.ev.note(f"{found}: no warm start needed")
            return _skipped_warm_start(b, folder, probe)
        b.ev.note(f"{found}: a short SFT on the training rows in the answer format comes first "
                  "(--no-warm-start skips it)")
    config = dataclasses.replace(train, method="sft", steps=inputs.sft_steps or b.project.sft_steps,
                                 learning_rate=inputs.sft_learning_rate or train.learning_rate)
    adapter = b.train("sft", inputs.sft_examples, config, folder, None)
    if inputs.warm_start == "auto":  # the report shows why the warm start ran
        adapter = dataclasses.replace(adapter, effective_config={**adapter.effective_config,
                                                                 "probe": probe.as_dict()})
        adapter.save()
    return adapter


def _skipped_warm_start(b: _Build, folder: Path, probe) -> Adapter:
    """An sft stage with no adapter (steps 0): the base already writes the format."""
    from edgetune.artifacts import atomic_dir

    with atomic_dir(folder, overwrite=True) as scratch:
        artifact = Adapter(path=scratch, base_model=b.base_model, method="sft", steps=0,
                           effective_config={"warm_start": "skipped", "probe": probe.as_dict()})
        artifact.save()
    return dataclasses.replace(artifact, path=folder)


def _run_train(b: _Build, folder: Path) -> Adapter:
    sft = b.made.get("sft")
    return b.train("train", b.inputs.splits.train, b.project.train, folder,
                   sft.path if sft and sft.steps else None)


def _run_merge(b: _Build, folder: Path) -> MergedModel:
    from edgetune.merge import merge

    return merge(b.made["train"], folder, overwrite=True)


def _run_convert(b: _Build, folder: Path) -> GgufModel:
    from edgetune.convert import convert

    return convert(b.made["merge"], folder, name=b.file_name, overwrite=True,
                   parity_texts=b.conversations(b.inputs.splits.eval))


def _run_quantise(b: _Build, folder: Path) -> QuantizedModels:
    from edgetune.quantise import quantise

    # The domain imatrix is calibrated on the calibration split, never on held-out rows.
    return quantise(b.made["convert"], b.profile, folder, name=b.file_name, overwrite=True,
                    imatrix_texts=b.conversations(b.inputs.splits.calibration),
                    on_progress=b.progress("quantise"))


def _run_evaluate(b: _Build, folder: Path) -> EvalReport:
    from edgetune.evaluate import evaluate

    return evaluate(b.made["convert"], b.made["quantise"], b.profile,
                    b.conversations(b.inputs.splits.eval), folder, overwrite=True,
                    qa_rows=b.inputs.splits.eval, system_prompt=b.project.system_prompt,
                    answer_format=b.project.train.answer_format,
                    accept_gate_failure=b.accept_gate_failure, on_progress=b.progress("evaluate"))






def _trained(adapter: Adapter) -> str:
    return f"{adapter.steps} steps on {adapter.effective_config.get('device')}"


@dataclass(frozen=True)
class _Stage:
    """One row of the build: how to show it, reuse its artifact, or make it."""

    name: str
    detail: Callable[[_Build], str]  # shown as the stage starts
    load: Callable[[Path], Any]  # the artifact a fresh stamp vouches for
    run: Callable[[_Build, Path], Any]  # makes the artifact in that folder
    done: Callable[[Any], str]  # the summary once it is made
    reused: Callable[[Any], str] = lambda _artifact: "up to date"
    llama: bool = False  # runs llama.cpp: its log lines go to the build log


# The build, in order (sft only with SFT data). A stage is reused while its stamp is fresh;
# once one reruns, every later one does too (its input changed).
STAGE_TABLE = (
    _Stage("sft", lambda b: f"SFT warm start, {b.inputs.sft_steps or b.project.sft_steps} steps"
           + (" if the base model needs it" if b.inputs.warm_start == "auto" else ""),
           Adapter.load, _run_sft, lambda a: _trained(a) if a.steps else "skipped: not needed"),
    _Stage("train", lambda b: f"GRPO, {b.project.train.steps} steps", Adapter.load, _run_train,
           _trained),
    _Stage("merge", lambda b: "", MergedModel.load, _run_merge,
           lambda merged: f"max weight change {merged.max_weight_delta:.2e}"),
    _Stage("convert", lambda b: "F16 GGUF + parity checks", GgufModel.load, _run_convert,
           lambda f16: f"logit KLD {f16.logit_parity['mean_kld']:.1e}, "
                       f"top-1 {f16.logit_parity['top1']:.1%}", llama=True),
    _Stage("quantise", lambda b: ", ".join(b.profile.quants), QuantizedModels.load,
           _run_quantise, lambda quants: ", ".join(
               f"{q}{' (imatrix)' if q in quants.without_imatrix else ''}" for q in quants.files),
           llama=True),
    _Stage("evaluate", lambda b: f"{len(b.inputs.splits.eval)} held-out rows", EvalReport.load,
           _run_evaluate, lambda _report: "", llama=True),
    _Stage("bundle", lambda b: "manifest, model card, report, signature", bundle_stage.load_bundle,
           bundle_stage.run, lambda bundle: str(bundle.path),
           reused=lambda bundle: f"{bundle.path} (up to date)"),
)
assert tuple(s.name for s in STAGE_TABLE) == stages.STAGES, "one row per stage, in order"


def _run_stages(b: _Build, out: Path, plans: list, *, public_key: Path, force: bool,
                from_stage: str | None, to_stage: str | None) -> BuildResult:
    stamps = stages.Stamps(out)
    plan = {p.name: p for p in plans}
    if any(not stamps.fresh(p) for p in plans) or force or from_stage:  # a model will load
        from edgetune.training.backends import preload_backend

        # Unsloth must load before transformers does.
        preload_backend(b.project.train.backend, b.project.base_model, b.project.train)
        b.base_model = b.project.base_model or build_demo_base(b.ev)
    else:
        b.base_model = b.project.base_model or ""
    rebuilt = False
    for stage in (s for s in STAGE_TABLE if s.name in plan):  # no SFT data: no sft stage
        folder = plan[stage.name].folder
        b.ev.stage(stage.name, stage.detail(b))
        forced = from_stage is not None and \
            stages.STAGES.index(stage.name) >= stages.STAGES.index(from_stage)
        if not force and not forced and not rebuilt and stamps.fresh(plan[stage.name]):
            artifact = b.made[stage.name] = stage.load(folder)
            b.ev.stage_done(stage.name, stage.reused(artifact))
        else:
            rebuilt = True
            stamps.clear(plan[stage.name])
            # llama_cpp loads only for a stage that runs it: never in an up-to-date rebuild.
            with llamacpp.log_lines(b.log) if stage.llama else contextlib.nullcontext():
                artifact = b.made[stage.name] = stage.run(b, folder)
            stamps.write(plan[stage.name])
            b.ev.stage_done(stage.name, stage.done(artifact))
        if stage.name == to_stage:
            return BuildResult(bundle=None, public_key=public_key, eval_report={},
                               stopped_after=to_stage)
    bundle = b.made["bundle"]
    return BuildResult(bundle=bundle, public_key=public_key, eval_report=b.eval_results(),
                       report=bundle_stage.copy_report(bundle.path))




def _key_paths(key: Path | None) -> tuple[Path, Path]:
    """The key pair's paths, nothing created: a build stopping before the bundle signs nothing."""
    from edgetune.keys import default_private_key

    private = Path(key) if key is not None else default_private_key()
    return private, private.with_suffix(".pub")


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








def held_out_rows(data: Path | None, columns: Columns = Columns(), *,
                  all_rows: bool = False) -> tuple[QARow, ...]:
    """The rows ``build`` holds out of ``data`` (default: the demo's), or every row."""
    project = demo_project()
    rows = load_qa(data or project.data, columns).rows
    return rows if all_rows else split_qa(rows, eval_fraction=project.eval_fraction).eval
