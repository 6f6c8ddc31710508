"""The chat messages a Q&A row becomes, in one place: training prompts, held-out conversations
for fidelity and calibration, and task-accuracy prompts all render through these functions, so
the model is evaluated on exactly the turns it was trained on."""

from __future__ import annotations

from typing import Any

from edgetune.data import QARow


def formatted_answer(row: QARow) -> str:
    """The reference answer in the answer format (its reasoning where the data has it)."""
    reasoning = row.reasoning or row.answer
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{row.answer}\n</answer>"


def prompt_messages(system_prompt: str, row: QARow) -> list[dict]:
    """System prompt (when there is one) and the question: what the model answers."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": row.question}]


def conversation(system_prompt: str, row: QARow) -> list[dict]:
    """The whole held-out conversation: system, question and the reference answer."""
    return prompt_messages(system_prompt, row) + [{"role": "assistant",
                                                   "content": formatted_answer(row)}]


def conversation_text(tokenizer: Any, system_prompt: str, row: QARow) -> str:
    """``conversation`` rendered with the model's own chat template, as it sees it at chat time."""
    return tokenizer.apply_chat_template(conversation(system_prompt, row), tokenize=False)
