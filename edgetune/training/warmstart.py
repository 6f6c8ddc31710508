"""Format warm start: a short SFT that teaches the answer format, before GRPO, when the base
model almost never writes it.

GRPO learns only from reward differences between the completions of one prompt. A base model
that never writes ``<reasoning>...</reasoning><answer>...</answer>`` scores 0 on every format
reward, and its answers cannot be extracted for correctness either: every group is flat and
nothing is learnt (measured on one H100: 44 GRPO steps of SmolLM2-135M-Instruct, every reward
exactly 0, held-out format rate 0% before and after). DeepSeek-R1's "cold start" and Unsloth's
newer GRPO notebooks teach the format first with a short SFT; edgetune does the same on the
creator's own training rows, rendered in the answer format with their reasoning where the data
has it. A quick probe (a few sampled answers of the base model) decides whether it is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetune.conversations import conversation, prompt_messages
from edgetune.data import QARow
from edgetune.sft_data import SftExample
from edgetune.training.rewards import ANSWER_FORMATS, AnswerFormat, score_completion

PROBE_ROWS = 8
# Below this share of strictly formatted answers, GRPO would start from flat groups: warm start.
WARM_START_BELOW = 0.25


@dataclass(frozen=True)
class FormatProbe:
    """How often sampled answers follow the answer format."""

    strict: float  # share in exactly the requested layout (strict_format reward)
    soft: float  # share with a reasoning block followed by an answer block anywhere
    correct: float  # share whose extracted answer matches the reference
    samples: int
    example: str = ""  # the first sampled answer, to show the user what the model writes

    @property
    def needs_warm_start(self) -> bool:
        return self.strict < WARM_START_BELOW

    def as_dict(self) -> dict:
        return {"strict_format_rate": self.strict, "soft_format_rate": self.soft,
                "correct_rate": self.correct, "samples": self.samples}


def score_answers(texts: Sequence[str], rows: Sequence[QARow], fmt: AnswerFormat) -> FormatProbe:
    scores = [score_completion(t, r.answer, fmt) for t, r in zip(texts, rows)]
    n = len(scores) or 1
    return FormatProbe(strict=sum(s["strict_format"] > 0 for s in scores) / n,
                       soft=sum(s["soft_format"] > 0 for s in scores) / n,
                       correct=sum(s["correct"] > 0 for s in scores) / n,
                       samples=len(scores), example=texts[0] if texts else "")


def sample_answers(model, tokenizer, rows: Sequence[QARow], *, system_prompt: str,
                   max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                   batch_size: int = 8) -> list[str]:
    """One sampled answer per row from an HF model (a PeftModel too), batched, left-padded.
    ``temperature=0`` decodes greedily."""
    import torch

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            prompts = [tokenizer.apply_chat_template(prompt_messages(system_prompt, r),
                                                     tokenize=False, add_generation_prompt=True)
                       for r in chunk]
            batch = tokenizer(prompts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                        if temperature > 0 else {"do_sample": False})
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                     **sampling)
            texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                            skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    return texts


def probe_format(base: Path, rows: Sequence[QARow], *, system_prompt: str, answer_format: str,
                 max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                 n: int = PROBE_ROWS) -> FormatProbe:
    """Sample answers of the base model on ``n`` training rows and score their format."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune import hf

    cuda = torch.cuda.is_available()
    tokenizer = hf.load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if cuda else torch.float32).to("cuda" if cuda else "cpu")
    model.eval()
    chosen = list(rows[:n])
    texts = sample_answers(model, tokenizer, chosen, system_prompt=system_prompt,
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    del model
    return score_answers(texts, chosen, ANSWER_FORMATS[answer_format])


def warm_start_examples(rows: Sequence[QARow], *, system_prompt: str,
                        answer_format: str) -> tuple[SftExample, ...]:
    """The training rows as SFT conversations whose reply is the reference answer in the
    answer format: what the warm start teaches."""
    fmt = ANSWER_FORMATS[answer_format]
    return tuple(SftExample(messages=tuple(conversation(system_prompt, r, fmt)),
                            source=r.source) for r in rows)


def warm_start_steps(rows: int, batch_size: int) -> int:
    """About two passes over the training rows, at least 20 and at most 120 steps: enough to
    learn a layout (not the content), short beside the GRPO run."""
    return max(20, min(120, -(-2 * rows // max(1, batch_size))))
