"""Training settings and what a run reports: ``TrainConfig``, ``StepLog``, ``TrainingInterrupted``.

Imported by every part of training (the stage door, the runner, backends, the multi-GPU
launcher) and by the project file; it imports no ML library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edgetune.errors import ConfigError, EdgetuneError
from edgetune.training.rewards import ANSWER_FORMATS, REWARD_NAMES

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
    # (torch.compile). None: on where it applies. See runner.compile_generation.
    compile_generation: bool | None = None
    # GRPO on CUDA: decode under bf16 autocast. PEFT keeps LoRA weights in fp32, so outside the
    # training step's autocast every adapter ran as fp32 GEMMs while decoding. None: on where the
    # model computes in bf16. See runner.autocast_generation.
    autocast_generation: bool | None = None
    # GPUs of this machine to train on. 1: in this process. More: the same run through
    # `accelerate launch` (edgetune.training.distributed); each GPU takes prompts_per_step prompts.
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
        for free in ("steps", "backend", "checkpoint_every", "compile_generation",
                     "autocast_generation", "gpus"):
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
