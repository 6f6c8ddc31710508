"""Training settings that fit the model, the device and the data, each with where it came from.

``TrainConfig``'s own defaults suit the built-in demo (a tiny model trained from scratch in a
minute on a CPU). Applied silently to a real model they failed: a learning rate of 5e-4 and
64-token completions on SmolLM2-135M-Instruct gave a reward of 0 from step 2 and every
completion cut at the cap. ``fit_settings`` picks the settings a setting was not given for:

* completion length: long enough for the reference answers in the answer format (the 90th
  percentile of their token counts, with room to spare), capped per device;
* learning rate and LoRA rank by model size (LoRA on a pretrained model wants ~1e-5..5e-5 for
  GRPO, ~2e-4 for the SFT warm start; a from-scratch toy model wants far more);
* generations per prompt by device (GRPO needs several to compare; a CPU pays for each).

Each effective setting is reported with its source: ``flag``, ``project file``,
``default for this model`` or ``default``; and ``warnings`` names settings known to fail.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from edgetune.training.config import TrainConfig

TOY_MODEL = 50_000_000  # below this many parameters: a demo/test model, TrainConfig's defaults fit
FITTED = ("learning_rate", "max_completion_length", "num_generations", "lora_r", "lora_alpha")


@dataclass(frozen=True)
class FittedSettings:
    config: TrainConfig
    sources: dict[str, str]  # setting -> "flag" | "project file" | "default for this model" | "default"
    warnings: tuple[str, ...] = ()
    sft_learning_rate: float = 2e-4  # the warm start's (an SFT on the answer format)

    def describe(self) -> list[str]:
        """``name = value (source)`` for every fitted setting and the run's shape."""
        names = ("method", "steps", *FITTED, "prompts_per_step", "temperature", "answer_format")
        return [f"{n} = {getattr(self.config, n)} ({self.sources.get(n, 'default')})"
                for n in names]


def answer_lengths(tokenizer, texts: Iterable[str]) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def completion_cap(lengths: Sequence[int], *, cuda: bool) -> int:
    """Room for the 90th-percentile reference answer plus a quarter, in steps of 32 tokens;
    at least 64, at most 1024 on a GPU and 384 on a CPU (where each token costs seconds)."""
    if not lengths:
        return 256 if cuda else 128
    ordered = sorted(lengths)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    wanted = 32 * math.ceil((p90 * 1.25 + 16) / 32)
    return max(64, min(wanted, 1024 if cuda else 384))


def fit_settings(config: TrainConfig, *, parameters: int | None, cuda: bool,
                 answer_token_lengths: Sequence[int], explicit: Mapping[str, str]) -> FittedSettings:
    """``config`` with each setting in ``FITTED`` that ``explicit`` does not name replaced by
    what fits; ``explicit`` maps a setting to where the user gave it ("flag", "project file")."""
    sources = {name: "default" for name in (f.name for f in dataclasses.fields(TrainConfig))}
    sources.update(explicit)
    toy = parameters is not None and parameters < TOY_MODEL
    fitted: dict = {}
    sft_lr = 1e-3 if toy else 2e-4
    if not toy:
        size = parameters or 1_500_000_000
        fitted["learning_rate"] = 5e-5 if size < 1_000_000_000 else 2e-5
        fitted["lora_r"] = 16 if size < 1_000_000_000 or not cuda else 32
        fitted["lora_alpha"] = 2 * fitted["lora_r"]
        fitted["num_generations"] = 8 if cuda else 4
        fitted["max_completion_length"] = completion_cap(answer_token_lengths, cuda=cuda)
    chosen = {k: v for k, v in fitted.items() if k not in explicit}
    for name in chosen:
        sources[name] = "default for this model"
    result = dataclasses.replace(config, **chosen)
    return FittedSettings(config=result, sources=sources,
                          warnings=tuple(check_settings(result, answer_token_lengths)),
                          sft_learning_rate=sft_lr)


def check_settings(config: TrainConfig, answer_token_lengths: Sequence[int]) -> list[str]:
    """Settings known to fail, in one sentence each with the fix."""
    problems = []
    if answer_token_lengths:
        ordered = sorted(answer_token_lengths)
        median = ordered[len(ordered) // 2]
        if config.max_completion_length < median:
            problems.append(
                f"max_completion_length {config.max_completion_length} is shorter than half the "
                f"reference answers ({median} tokens in the answer format): most completions will "
                f"be cut off and score 0; raise it to at least {completion_cap(ordered, cuda=True)}")
    if config.method == "grpo" and config.num_generations < 4:
        problems.append(f"num_generations {config.num_generations}: GRPO compares the completions "
                        "of one prompt, and with fewer than 4 most groups score alike; use 4-8")
    return problems
