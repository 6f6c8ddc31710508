"""train: GRPO (or an SFT warm start) on the creator's data, producing a LoRA adapter.

The engine is TRL's trainers; a backend (``edgetune.training.backends``) only loads the model with its
LoRA: Unsloth on NVIDIA GPUs, plain transformers + PEFT anywhere else. Everything around the
trainer lives here and is the same for both, so a GPU run and a CPU run leave the same layout:

    <out>/                      the finished adapter (written atomically at the end)
        adapter_model.safetensors, adapter_config.json, training_log.jsonl, artifact.json
    <out>.checkpoints/          while training: run.json and checkpoint-N (model, optimizer,
                                scheduler, RNG), removed once the adapter is in place

``resume=True`` continues from the newest complete checkpoint with its optimizer, scheduler
and RNG state; Ctrl-C asks the trainer to save a checkpoint at the end of the current step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgetune import hf
from edgetune.artifacts import Adapter, atomic_dir
from edgetune.errors import ConfigError, OutputExistsError
from edgetune.training.checkpoints import checkpoint_dir, checkpoint_step, data_digest, prepare_work_dir, truncate_log
from edgetune.training.config import LOG_FILE, StepLog, TrainConfig
from edgetune.training.runner import run_trainer


def train(base_model: str, data: Sequence[Any], config: TrainConfig, out: Path, *,
          init_adapter: Path | None = None, resume: bool = False, overwrite: bool = False,
          on_step: Callable[[StepLog], None] | None = None,
          on_note: Callable[[str], None] | None = None,
          trainer_overrides: dict | None = None) -> Adapter:
    """Train a LoRA adapter on ``data`` and write it, with its training log, to ``out``.

    ``data`` holds QARow for GRPO and SftExample for SFT. ``init_adapter`` continues training an
    existing adapter (GRPO after an SFT warm start). ``trainer_overrides`` go straight into the
    TRL config (benchmarks use it to try generation settings).
    """
    from edgetune.training.backends import select_backend

    config.validate()
    if not data:
        raise ConfigError("no training rows", hint="check the dataset and the eval split")
    out = Path(out)
    note = on_note or (lambda _msg: None)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists", hint="choose another output or pass --overwrite")
    base = hf.resolve_model(base_model)
    hf.architecture(base)
    hf.refuse_prequantized(base)
    from edgetune.training import distributed

    plan = None
    if config.gpus > 1:
        plan = distributed.plan_for(config, base, on_note=note)  # refuses what cannot work
    elif (gpus := distributed.visible_gpus()) > 1:
        note(f"this machine has {gpus} GPUs; training on the first (--gpus {gpus} uses them all)")
    backend = select_backend("trl" if plan else config.backend, base, config)

    work = checkpoint_dir(out)
    resume_from = prepare_work_dir(work, base, config, init_adapter, data_digest(data),
                                    resume=resume, overwrite=overwrite)
    if resume_from is not None:
        note(f"resuming from {resume_from.name}")
    log_path = work / LOG_FILE
    truncate_log(log_path, checkpoint_step(resume_from))

    def log(entry: dict) -> None:
        with log_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    if plan is not None:
        effective = distributed.run(plan, work=work, base=base, data=data, config=config,
                                    init_adapter=init_adapter, resume_from=resume_from,
                                    overrides=trainer_overrides or {}, on_step=on_step, note=note)
        save = functools.partial(distributed.copy_adapter, work / distributed.FINAL_DIR)
    else:
        effective, trainer = run_trainer(backend, base, data, config, work, init_adapter,
                                          resume_from, log, on_step, note, trainer_overrides or {})
        save = trainer.model.save_pretrained
    with atomic_dir(out, overwrite=overwrite) as scratch:
        save(scratch)
        shutil.copyfile(log_path, scratch / LOG_FILE)
        artifact = Adapter(path=scratch, base_model=str(base), method=config.method,
                           backend=backend.name, steps=config.steps, log_file=LOG_FILE,
                           effective_config=effective)
        artifact.save()
    shutil.rmtree(work, ignore_errors=True)
    return dataclasses.replace(artifact, path=out)
