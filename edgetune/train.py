"""train: GRPO on the creator's Q&A, producing a LoRA adapter and a training log.

Backends are the seam between edgetune and a training engine. ``trl`` (TRL + PEFT) runs
anywhere, CPU included; the Unsloth backend for NVIDIA GPUs plugs in here with the same
inputs and the same artifact layout.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgetune import hf
from edgetune.artifacts import Adapter, atomic_dir
from edgetune.data import QARow
from edgetune.errors import ConfigError
from edgetune.rewards import REWARD_NAMES, rewards_by_name

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOG_FILE = "training_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """GRPO settings. Defaults suit the CPU demo; the README lists settings for 1.5B-3B models."""

    steps: int = 30
    num_generations: int = 4
    prompts_per_step: int = 2
    max_completion_length: int = 64
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    temperature: float = 1.0
    seed: int = 0
    rewards: tuple[str, ...] = REWARD_NAMES
    system_prompt: str = ""
    backend: str = "auto"

    def validate(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append("steps must be at least 1")
        if self.num_generations < 2:
            problems.append("num_generations must be at least 2 (GRPO compares completions)")
        if self.prompts_per_step < 1:
            problems.append("prompts_per_step must be at least 1")
        if self.max_completion_length < 8:
            problems.append("max_completion_length must be at least 8")
        unknown = [r for r in self.rewards if r not in REWARD_NAMES]
        if unknown:
            problems.append(f"unknown reward {', '.join(unknown)} (choose from {', '.join(REWARD_NAMES)})")
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems),
                              hint="fix the values in the train section or on the command line")


@dataclass(frozen=True)
class StepLog:
    step: int
    total: int
    metrics: dict = field(default_factory=dict)


class TrainBackend(Protocol):
    name: str

    def train_grpo(self, base: Path, rows: Sequence[QARow], config: TrainConfig, out: Path,
                   on_step: Callable[[StepLog], None]) -> dict:
        """Train a LoRA adapter into ``out``; return the effective configuration."""


def select_backend(name: str) -> TrainBackend:
    if name in ("auto", "trl"):
        return TrlBackend()
    if name == "unsloth":
        raise ConfigError("the Unsloth backend is not available in this version yet",
                          hint="use --backend trl (works on CPU and GPU)")
    raise ConfigError(f"unknown training backend '{name}'", hint="choose auto, trl or unsloth")


def train(base_model: str, rows: Sequence[QARow], config: TrainConfig, out: Path, *,
          overwrite: bool = False, on_step: Callable[[StepLog], None] | None = None) -> Adapter:
    """GRPO-train a LoRA adapter on ``rows``; write it and the training log under ``out``."""
    config.validate()
    if not rows:
        raise ConfigError("no training rows", hint="check the dataset and the eval split")
    base = hf.resolve_model(base_model)
    hf.architecture(base)
    backend = select_backend(config.backend)
    with atomic_dir(out, overwrite=overwrite) as scratch:
        log_path = scratch / LOG_FILE

        def log_step(entry: StepLog) -> None:
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": entry.step, **entry.metrics}) + "\n")
            if on_step:
                on_step(entry)

        effective = backend.train_grpo(base, rows, config, scratch, log_step)
        artifact = Adapter(path=scratch, base_model=str(base), method="grpo", backend=backend.name,
                           steps=config.steps, log_file=LOG_FILE, effective_config=effective)
        artifact.save()
    return dataclasses.replace(artifact, path=out)


def grpo_prompt(row: QARow, system_prompt: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": row.question}]


class TrlBackend:
    """TRL's GRPOTrainer with a PEFT LoRA: the portable path (TRL >= 1.16 runs GRPO on CPU)."""

    name = "trl"

    def train_grpo(self, base, rows, config, out, on_step):
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl import GRPOConfig, GRPOTrainer

        torch.manual_seed(config.seed)
        dataset = Dataset.from_list(
            [{"prompt": grpo_prompt(r, config.system_prompt), "answer": r.answer} for r in rows]
        )
        cuda = torch.cuda.is_available()
        args = GRPOConfig(
            output_dir=str(out / "trainer"),
            max_steps=config.steps,
            per_device_train_batch_size=config.num_generations * config.prompts_per_step,
            num_generations=config.num_generations,
            max_completion_length=config.max_completion_length,
            learning_rate=config.learning_rate,
            temperature=config.temperature,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=config.seed,
            use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            disable_tqdm=True,
        )
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                          target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        model = hf.load_causal_lm(base, "bfloat16" if args.bf16 else "float32")
        trainer = GRPOTrainer(model=model, reward_funcs=rewards_by_name(config.rewards),
                              args=args, train_dataset=dataset,
                              processing_class=hf.load_tokenizer(base), peft_config=lora)

        class _Relay(TrainerCallback):
            def on_log(self, _args, state, _control, logs=None, **_kw):
                if logs and "reward" in logs:
                    on_step(StepLog(state.global_step, config.steps, dict(logs)))

        # Stages never print: progress reaches the user through on_step.
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_Relay())
        trainer.train()
        trainer.model.save_pretrained(out)
        effective = {
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_generations": args.num_generations,
            "max_completion_length": args.max_completion_length,
            "loss_type": args.loss_type,
            "beta": args.beta,
            "learning_rate": args.learning_rate,
            "lora_r": config.lora_r,
            "lora_alpha": config.lora_alpha,
            "device": "cuda" if cuda else "cpu",
        }
        import shutil

        shutil.rmtree(out / "trainer", ignore_errors=True)
        return effective
