"""train: GRPO (or an SFT warm start) on the creator's data, producing a LoRA adapter.

The engine is TRL's trainers; a backend (``edgetune.backends``) only loads the model with its
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
import os
import time
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import hf
from edgetune.artifacts import Adapter, atomic_dir
from edgetune.checkpoints import (
    StopOnSignal,
    checkpoint_dir,
    checkpoint_step,
    data_digest,
    last_checkpoint,
    prepare_work_dir,
    truncate_log,
)
from edgetune.errors import ConfigError, EdgetuneError, OutputExistsError
from edgetune.rewards import ANSWER_FORMATS, REWARD_NAMES, rewards_by_name

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOG_FILE = "training_log.jsonl"
METHODS = ("grpo", "sft")
@dataclass(frozen=True)
class TrainConfig:
    """Training settings. Defaults suit the CPU demo; the README lists settings for 1.5B-3B models."""

    method: str = "grpo"
    steps: int = 30
    num_generations: int = 4
    prompts_per_step: int = 2
    gradient_accumulation_steps: int = 1
    max_prompt_length: int = 256
    max_completion_length: int = 64
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    temperature: float = 1.0
    seed: int = 0
    rewards: tuple[str, ...] = REWARD_NAMES
    answer_format: str = "reasoning"
    system_prompt: str = ""
    backend: str = "auto"
    base_bits: int | None = None  # 4 or 16; None: 16 when it fits the GPU, else 4
    checkpoint_every: int = 50
    sft_batch_size: int = 4
    max_seq_length: int = 1024  # SFT: longer examples are truncated
    # GRPO with the TRL backend on CUDA: decode with a static KV cache and a CUDA-graphed forward
    # (torch.compile). None: on where it applies. See _compile_generation.
    compile_generation: bool | None = None
    # GPUs of this machine to train on. 1: in this process. More: the same run through
    # `accelerate launch` (edgetune.distributed); each GPU takes prompts_per_step prompts.
    gpus: int = 1

    def validate(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.steps < 1:
            problems.append("steps must be at least 1")
        if self.num_generations < 2:
            problems.append("num_generations must be at least 2 (GRPO compares completions)")
        if self.prompts_per_step < 1:
            problems.append("prompts_per_step must be at least 1")
        if self.gradient_accumulation_steps < 1:
            problems.append("gradient_accumulation_steps must be at least 1")
        if self.max_completion_length < 8:
            problems.append("max_completion_length must be at least 8")
        if self.base_bits not in (None, 4, 16):
            problems.append(f"base_bits must be 4 or 16, not {self.base_bits}")
        if self.gpus < 1:
            problems.append("gpus must be at least 1")
        if self.checkpoint_every < 0:
            problems.append("checkpoint_every must be 0 (never) or more")
        if self.answer_format not in ANSWER_FORMATS:
            problems.append(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}")
        unknown = [r for r in self.rewards if r not in REWARD_NAMES]
        if unknown:
            problems.append(f"unknown reward {', '.join(unknown)} (choose from {', '.join(REWARD_NAMES)})")
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems),
                              hint="fix the values in the train section or on the command line")

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the run it continues (steps may grow)."""
        data = dataclasses.asdict(self)
        for free in ("steps", "backend", "checkpoint_every", "compile_generation", "gpus"):
            data.pop(free)
        data["rewards"] = list(self.rewards)
        return data


@dataclass(frozen=True)
class StepLog:
    step: int
    total: int
    metrics: dict = field(default_factory=dict)


class TrainingInterrupted(EdgetuneError):
    """Ctrl-C during training: a checkpoint was saved (or there was nothing to save yet)."""

    exit_code = 130


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
    from edgetune.backends import select_backend

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
    from edgetune import distributed

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
        effective, trainer = _run_trainer(backend, base, data, config, work, init_adapter,
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


def grpo_prompt(row, system_prompt: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": row.question}]


def _dataset(config: TrainConfig, data: Sequence[Any]):
    from datasets import Dataset

    if config.method == "sft":
        from edgetune.sft_data import to_prompt_completion

        return Dataset.from_list([to_prompt_completion(e) for e in data])
    return Dataset.from_list(
        [{"prompt": grpo_prompt(r, config.system_prompt), "answer": r.answer} for r in data])


def _trainer_args(config: TrainConfig, work: Path, *, cuda: bool, bf16: bool, overrides: dict):
    common = dict(
        output_dir=str(work),
        max_steps=config.steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        logging_steps=1,
        save_strategy="steps" if config.checkpoint_every else "no",
        save_steps=config.checkpoint_every or 500,
        save_total_limit=2,  # the previous checkpoint survives a crash while writing the next
        report_to=[],
        seed=config.seed,
        use_cpu=not cuda,
        bf16=bf16,
        disable_tqdm=True,
        # Several GPUs (edgetune.distributed): every LoRA weight gets a gradient each step, so
        # DDP need not search the graph for unused ones (the Trainer's default for a PeftModel).
        ddp_find_unused_parameters=False,
    )
    if config.method == "sft":
        from trl import SFTConfig

        return _one_gpu_per_process(SFTConfig(
            **common, per_device_train_batch_size=config.sft_batch_size,
            max_length=config.max_seq_length, packing=False, **overrides))
    from trl import GRPOConfig

    return _one_gpu_per_process(GRPOConfig(
        **common, per_device_train_batch_size=config.num_generations * config.prompts_per_step,
        num_generations=config.num_generations, max_completion_length=config.max_completion_length,
        temperature=config.temperature, **overrides))


def _one_gpu_per_process(args):
    """Train on cuda:0 alone when one process sees several GPUs (``--gpus 1`` on a multi-GPU
    machine). The Trainer would otherwise wrap the model in nn.DataParallel, which TRL's GRPO
    refuses; transformers sets ``_n_gpu`` the same way for models split with device_map.
    ``--gpus N`` is how to use the others (one process per GPU, edgetune.distributed)."""
    if args.n_gpu > 1:
        args._n_gpu = 1
    return args


def _run_trainer(backend, base, data, config, work, init_adapter, resume_from, log, on_step, note,
                 overrides, *, strategy: str = "single"):
    """Load, train, return ``(effective settings, trainer)``. In one process, or in each process
    of a multi-GPU run (``strategy`` "ddp" or "zero3", edgetune.distributed), where ``log`` and
    ``note`` write only in process 0 and ``on_step`` is None."""
    loaded = backend.load(base, config, init_adapter=init_adapter, on_note=note)
    # TRL after the backend: Unsloth must be imported before TRL to patch its trainers.
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from edgetune.health import TrainingHealth

    torch.manual_seed(config.seed)
    cuda = torch.cuda.is_available()
    args = _trainer_args(config, work, cuda=cuda, bf16=loaded.bf16, overrides=overrides)
    dataset = _dataset(config, data)
    if config.method == "sft":
        from trl import SFTTrainer

        trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=dataset,
                             processing_class=loaded.tokenizer, peft_config=loaded.peft_config)
    else:
        from trl import GRPOTrainer

        fmt = ANSWER_FORMATS[config.answer_format]
        trainer = GRPOTrainer(model=loaded.model, reward_funcs=rewards_by_name(config.rewards, fmt),
                              args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
                              peft_config=loaded.peft_config)
        # Auto only on the TRL backend: Unsloth replaces generate() with its own decode loop;
        # not with ZeRO-3, whose split weights are gathered again for every generate call.
        compiled = cuda and strategy != "zero3" and (
            config.compile_generation
            or (config.compile_generation is None and backend.name == "trl"))
        if compiled:
            _compile_generation(trainer, config)

    effective = effective_config(trainer.args, config, backend=backend.name, device=loaded.device,
                                 base_bits=loaded.base_bits)
    effective.update(loaded.extra)
    if config.method == "grpo":
        effective["compiled_generation"] = compiled
    if strategy != "single":
        effective.update(gpus=trainer.accelerator.num_processes, distributed=strategy)
    note("effective settings: " + ", ".join(f"{k}={v}" for k, v in effective.items()))
    if resume_from is None:
        log({"step": 0, "event": "config", **effective})
    health = TrainingHealth(window=max(3, min(10, config.steps // 5)),
                            max_completion_length=config.max_completion_length,
                            answer_format=ANSWER_FORMATS[config.answer_format].describe())
    stop = StopOnSignal()
    logged: set[int] = set()

    class _Relay(TrainerCallback):
        def on_log(self, _args, state, _control, logs=None, **_kw):
            # One entry per step: some backends (Unsloth) log extra summaries at the last step.
            if not logs or "train_runtime" in logs or state.global_step in logged:
                return
            logged.add(state.global_step)
            metrics = {k: v for k, v in logs.items() if isinstance(v, (int, float, str))}
            log({"step": state.global_step, **metrics})
            if config.method == "grpo":
                for warning in health.observe(state.global_step, metrics):
                    log({"step": state.global_step, "event": "warning", "code": warning.code,
                         "message": warning.message})
                    note(f"warning (step {warning.step}): {warning.message}")
            if on_step:
                on_step(StepLog(state.global_step, config.steps, metrics))

    # Stages never print: progress reaches the user through on_step / on_note.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_Relay())
    trainer.add_callback(stop)
    if os.environ.get(STATS_ENV):
        trainer.add_callback(_StepStats(Path(os.environ[STATS_ENV]), cuda))
    with stop.installed(note):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop.requested:
        saved = last_checkpoint(work)
        raise TrainingInterrupted(
            f"training stopped at step {trainer.state.global_step}"
            + (f"; checkpoint saved in {saved}" if saved else ""),
            hint="run the same command with --resume to continue from the checkpoint")
    return effective, trainer


# Benchmarks (benchmarks/grpo_gpu.py, grpo_multi_gpu.py) set this to a path: every training
# process then writes <path>.rank<N>.json with its step end times and peak GPU memory.
STATS_ENV = "EDGETUNE_TRAIN_STATS"


class _StepStats:
    def __init__(self, path: Path, cuda: bool):
        self.path, self.cuda, self.step_ends = path, cuda, []

    def __getattr__(self, name):  # TrainerCallback's other hooks
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **_kw):
        self.step_ends.append(time.perf_counter())

    def on_train_end(self, args, state, control, **_kw):
        import torch

        rank = args.process_index
        peak = torch.cuda.max_memory_allocated() if self.cuda else None
        Path(f"{self.path}.rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world_size": args.world_size, "step_ends": self.step_ends,
            "peak_allocated_bytes": peak,
            "device": torch.cuda.get_device_name() if self.cuda else "cpu"}))


def _compile_generation(trainer, config: TrainConfig) -> None:
    """Generate with a static KV cache and a decode step compiled into CUDA graphs.

    Generation is ~90% of a GRPO step at 1.5B-3B, and eager decoding is bound by the host
    launching ~500 small kernels per token, not by the GPU (benchmarks/README.md). transformers
    compiles the decode step itself when the cache is static (mode "reduce-overhead" replays
    CUDA graphs); TRL builds its GenerationConfig with ``disable_compile=True``, so we reopen it.
    ``max_cache_len`` fixes the cache shape across steps, so the graphs are captured once and
    not again for every new prompt length. LoRA weights are updated in place by the optimizer,
    so the replayed graphs always read the current adapter.
    """
    from transformers import CompileConfig

    generation = trainer.generation_config
    generation.cache_implementation = "static"
    generation.max_cache_len = config.max_prompt_length + config.max_completion_length + 8
    generation.disable_compile = False
    generation.compile_config = CompileConfig(fullgraph=False, dynamic=False,
                                              mode="reduce-overhead")
    if isinstance(getattr(trainer, "generation_kwargs", None), dict):  # re-applied per generate
        trainer.generation_kwargs["cache_implementation"] = "static"


def effective_config(args, config: TrainConfig, *, backend: str, device: str, base_bits: int) -> dict:
    """What the trainer will really do, read back after the backend's own overrides."""
    keys = ["per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
            "optim", "weight_decay", "lr_scheduler_type", "seed"]
    if config.method == "grpo":
        keys += ["num_generations", "max_completion_length", "loss_type", "beta", "temperature",
                 "generation_batch_size", "steps_per_generation", "scale_rewards",
                 "mask_truncated_completions", "cache_implementation"]
    else:
        keys += ["max_length", "packing"]
    found = {k: _plain(getattr(args, k, None)) for k in keys}
    return {"method": config.method, "backend": backend, "device": device, "base_bits": base_bits,
            "lora_r": config.lora_r, "lora_alpha": config.lora_alpha, **found}


def _plain(value):
    # Enums by their value first: transformers' OptimizerNames and SchedulerType are str
    # subclasses, whose str() is "OptimizerNames.ADAMW_TORCH_FUSED".
    value = getattr(value, "value", value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


