"""Task accuracy: the held-out questions answered by a GGUF, scored like training scores them.

Each question goes through the chat template embedded in the GGUF (what phone apps use), with
the persona's system prompt, greedy decoding and a length cap. The answer is judged by the same
correctness reward GRPO trained on, so "accuracy" means the same thing in training and in eval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgetune import llamacpp
from edgetune.conversations import prompt_messages
from edgetune.data import QARow
from edgetune.training.rewards import ANSWER_FORMATS, correctness_reward, extract_answer


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    truncated: int  # answers cut off by the length cap
    mean_tokens: float
    wrong: tuple[str, ...] = field(default=())  # sources of the rows answered wrongly
    answers: tuple[str | None, ...] = field(default=())  # the extracted answer per row

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"task_accuracy": self.accuracy, "task_correct": self.correct,
                "task_total": self.total, "task_truncated": self.truncated,
                "task_mean_tokens": self.mean_tokens}


def task_accuracy(gguf: Path, rows: Sequence[QARow], *, system_prompt: str = "",
                  answer_format: str = "reasoning", max_tokens: int = 256, n_ctx: int = 2048,
                  on_progress: Callable[[int, int], None] | None = None) -> Accuracy:
    """Greedy answers from ``gguf`` to ``rows``, scored by the training correctness reward."""
    fmt = ANSWER_FORMATS[answer_format]
    correctness = correctness_reward(fmt)
    trained = trained_context(gguf)
    llm = llamacpp.open_gguf(gguf, n_ctx=min(n_ctx, trained) if trained else n_ctx)
    correct = truncated = tokens = 0
    wrong: list[str] = []
    answers: list[str | None] = []
    try:
        for i, row in enumerate(rows):
            if on_progress:
                on_progress(i, len(rows))
            llm.reset()
            reply = llm.create_chat_completion(
                prompt_messages(system_prompt, row), temperature=0.0, top_k=1, max_tokens=max_tokens,
                seed=0)
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
            tokens += reply["usage"]["completion_tokens"]
            truncated += choice["finish_reason"] == "length"
            answers.append(extract_answer(text, fmt))
            if correctness(completions=[text], answer=[row.answer])[0] > 0:
                correct += 1
            else:
                wrong.append(row.source)
    finally:
        llm.close()
    return Accuracy(correct=correct, total=len(rows), truncated=truncated,
                    mean_tokens=tokens / len(rows) if rows else 0.0, wrong=tuple(wrong),
                    answers=tuple(answers))


def trained_context(gguf: Path) -> int | None:
    """``<arch>.context_length`` from the GGUF header: never answer past what the model saw."""
    import gguf as gguf_py

    from edgetune.llamacpp import gguf_field

    reader = gguf_py.GGUFReader(str(gguf))
    arch = gguf_field(reader, "general.architecture")
    value = gguf_field(reader, f"{arch}.context_length")
    return int(value) if value else None
