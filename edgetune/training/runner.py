"""The training loop of one process: load the model through a backend, build TRL's trainer,
relay its steps, stop cleanly on Ctrl-C.

``run_trainer`` is shared by a one-process run (``trainer.train``) and by every process of a
multi-GPU run (``distributed``), so both leave the same log and adapter.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgetune.conversations import prompt_messages
from edgetune.training.checkpoints import StopOnSignal, last_checkpoint
from edgetune.training.config import StepLog, TrainConfig, TrainingInterrupted
from edgetune.training.rewards import ANSWER_FORMATS, rewards_by_name


def _dataset(config: TrainConfig, data: Sequence[Any]):
    from datasets import Dataset

    if config.method == "sft":
        from edgetune.sft_data import to_prompt_completion

        return Dataset.from_list([to_prompt_completion(e) for e in data])
    return Dataset.from_list(
        [{"prompt": prompt_messages(config.system_prompt, r), "answer": r.answer} for r in data])


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
        # Several GPUs (edgetune.training.distributed): every LoRA weight gets a gradient each step, so
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
    ``--gpus N`` is how to use the others (one process per GPU, edgetune.training.distributed)."""
    if args.n_gpu > 1:
        args._n_gpu = 1
    return args


def run_trainer(backend, base, data, config, work, init_adapter, resume_from, log, on_step, note,
                 overrides, *, strategy: str = "single"):
    """Load, train, return ``(effective settings, trainer)``. In one process, or in each process
    of a multi-GPU run (``strategy`` "ddp" or "zero3", edgetune.training.distributed), where ``log`` and
    ``note`` write only in process 0 and ``on_step`` is None."""
    loaded = backend.load(base, config, init_adapter=init_adapter, on_note=note)
    # TRL after the backend: Unsloth must be imported before TRL to patch its trainers.
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from edgetune.training.health import TrainingHealth

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
            compile_generation(trainer, config)
        # Auto on the TRL backend where the model computes in bf16 (Unsloth has its own decode).
        autocast = cuda and (config.autocast_generation or (
            config.autocast_generation is None and loaded.bf16 and backend.name == "trl"))
        if autocast:
            autocast_generation(trainer)

    effective = effective_config(trainer.args, config, backend=backend.name, device=loaded.device,
                                 base_bits=loaded.base_bits)
    effective.update(loaded.extra)
    if config.method == "grpo":
        effective["compiled_generation"] = compiled
        effective["autocast_generation"] = autocast
    if strategy != "single":
        effective.update(gpus=trainer.accelerator.num_processes, distributed=strategy)
    note("effective settings: " + ", ".join(f"{k}={v}" for k, v in effective.items()))
    if resume_from is None:
        log({"step": 0, "event": "config", **effective})
    health = TrainingHealth(window=max(3, min(10, config.steps // 5)),
                            max_completion_length=config.max_completion_length,
                            answer_format=ANSWER_FORMATS[config.answer_format].describe(),
                            system_prompt_given=bool(config.system_prompt))
    stop = StopOnSignal()
    logged: set[int] = set()
    clock: dict[int, float] = {}  # step -> when it began

    class _Relay(TrainerCallback):
        def on_step_begin(self, _args, state, _control, **_kw):
            clock.setdefault(state.global_step, time.perf_counter())

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
            # After the second step of this run: the first carries the warm-up (compiling the
            # decode step on a GPU took 75 s against 1.5 s a step after it).
            if len(logged) == 2 and state.global_step - 1 in clock:
                note(time_estimate(time.perf_counter() - clock[state.global_step - 1],
                                   config.steps - state.global_step, cuda=cuda))
            if on_step:
                on_step(StepLog(state.global_step, config.steps, metrics))

    # Stages never print: progress reaches the user through on_step / on_note.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_Relay())
    trainer.add_callback(stop)
    if os.environ.get(STATS_ENV):
        trainer.add_callback(_StepStats(Path(os.environ[STATS_ENV]), cuda))
    if resume_from is None:
        params = sum(p.numel() for p in trainer.model.parameters())
        note(rough_estimate(config, params, cuda=cuda))
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


def compile_generation(trainer, config: TrainConfig) -> None:
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


def autocast_generation(trainer) -> None:
    """Decode under bf16 autocast, as the training step's forward already runs.

    PEFT keeps LoRA weights in fp32 (``autocast_adapter_dtype``), and TRL generates outside the
    accelerator's autocast: every adapter of every decode step ran as fp32 GEMMs. Profiled on an
    H100 (Qwen2.5-1.5B shape, LoRA r=16 on 7 projections, CUDA-graphed decode), the top kernel of
    a generate call was cutlass's fp32 SIMT SGEMM, and fp32 GEMMs with their split-K reductions
    took ~35% of its GPU time (benchmarks/results/grpo_gpu.json, ``kernel_profile``). Under
    autocast they run on bf16 tensor cores. The log-probs that train are computed again in the
    loss's forward (under autocast already), so generation now matches it more closely.
    Patched on the model instance: TRL calls ``unwrapped_model.generate``, the same object.
    """
    import torch

    model = trainer.model
    generate = model.generate

    def generate_bf16(*args, **kwargs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return generate(*args, **kwargs)

    model.generate = generate_bf16


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


# Rates for an estimate before the first step, fitted to measured runs (a factor of 2 either way):
# CPU, 2 quiet cores: a GRPO step of SmolLM2-135M (2 prompts x 4 completions x 64 tokens) took
# 19 s, ~60 GFLOP/s of 2 x params per generated token and 8 x params per trained token (forward,
# backward, reference log-probs; a prompt counted as 64 tokens). GPU (H100): decode is per
# token, not per FLOP: ~8 ms a decode step for 1.5B (compiled), ~30 ms uncompiled (issue 21).
CPU_FLOPS = 60e9
CPU_TOKEN_SECONDS = 0.03  # each decode step's fixed cost in generate(), whatever the model size
GPU_FLOPS = 200e12
GPU_TOKEN_SECONDS = 0.02


def rough_step_seconds(config: TrainConfig, params: int, *, cuda: bool) -> float:
    """Seconds one step should take, from the model's size and the step's shape alone."""
    if config.method == "sft":
        tokens = config.sft_batch_size * min(config.max_seq_length, 512)
        return 6 * params * tokens / (GPU_FLOPS if cuda else CPU_FLOPS)
    completions = config.num_generations * config.prompts_per_step
    trained = completions * (min(config.max_prompt_length, 64) + config.max_completion_length)
    if cuda:
        decode = config.max_completion_length * GPU_TOKEN_SECONDS * max(1.0, params / 1.5e9)
        return decode + 8 * params * trained / GPU_FLOPS
    generated = completions * config.max_completion_length
    return (config.max_completion_length * CPU_TOKEN_SECONDS
            + (2 * params * generated + 8 * params * trained) / CPU_FLOPS)


def rough_estimate(config: TrainConfig, params: int, *, cuda: bool) -> str:
    """The line shown before the first step: the whole run, from model size x steps x device."""
    total = rough_step_seconds(config, params, cuda=cuda) * config.steps
    text = (f"estimate before the first step: about {_duration(total)} for {config.steps} "
            f"{config.method.upper()} steps ({params / 1e6:,.0f}M parameters on "
            f"{'a GPU' if cuda else 'the CPU'}; a measured figure follows the second step)")
    return text + _busy(cuda)


def time_estimate(step: float, remaining: int, *, cuda: bool) -> str:
    """One line for the user once a step's time is known: how long the rest will take, a word when
    the machine is busy (on a CPU a shared machine makes steps several times slower)."""
    rest = step * remaining
    text = (f"a step takes {step:.1f} s: about {_duration(rest)} for the "
            f"{remaining} steps left" if remaining else f"a step takes {step:.1f} s")
    return text + _busy(cuda)


def _busy(cuda: bool) -> str:
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if not cuda and load > cores * 1.5:
        return (f" (this machine is busy: load {load:.1f} on {cores} cores, so steps may be "
                "slower than they would be on an idle one)")
    return ""


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
