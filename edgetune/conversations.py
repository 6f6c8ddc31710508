"""The chat messages a Q&A row becomes, in one place: training prompts, held-out conversations
for fidelity and calibration, and task-accuracy prompts all render through these functions, so
the model is evaluated on exactly the turns it was trained on."""

from __future__ import annotations

from typing import Any

from edgetune.data import QARow
from edgetune.training.rewards import REASONING, AnswerFormat


def formatted_answer(row: QARow, fmt: AnswerFormat = REASONING) -> str:
    """The reference answer in the answer format, exactly as the strict format reward wants it
    (its reasoning where the data has it, else the answer itself)."""
    reasoning = (row.reasoning or row.answer).strip()
    if fmt.answer_tag is None:  # R1: <think>...</think> then the answer as plain text
        return f"<{fmt.reasoning_tag}>\n{reasoning}\n</{fmt.reasoning_tag}>\n{row.answer.strip()}"
    ro, rc, ao, ac = fmt.tags()
    return f"{ro}\n{reasoning}\n{rc}\n{ao}\n{row.answer.strip()}\n{ac}"


def prompt_messages(system_prompt: str, row: QARow) -> list[dict]:
    """System prompt (when there is one) and the question: what the model answers."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": row.question}]


def conversation(system_prompt: str, row: QARow, fmt: AnswerFormat = REASONING) -> list[dict]:
    """The whole conversation: system, question and the reference answer in the format."""
    return prompt_messages(system_prompt, row) + [{"role": "assistant",
                                                   "content": formatted_answer(row, fmt)}]


def conversation_text(tokenizer: Any, system_prompt: str, row: QARow) -> str:
    """``conversation`` rendered with the model's own chat template, as it sees it at chat time."""
    return tokenizer.apply_chat_template(conversation(system_prompt, row), tokenize=False)
