"""Load supervised fine-tuning (SFT) conversations that warm-start ``<think>``-style reasoning.

Reads the same files as ``data.py`` (.jsonl, .json, .csv, with the same row names:
``file.jsonl:12``, ``file.json:[3]``, ``file.csv:4``) but turns each record into a chat
conversation instead of a question/answer pair. Four record shapes are understood; the first
record decides the shape of a file and every other record must share it, because a file mixing
shapes is almost always a broken merge or export. A record whose user or assistant text is
empty is skipped and counted; every other problem is a DataError naming the row.

Kept free of torch / transformers / datasets so the CLI stays fast to start.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.data import (Columns, csv_records, record_fields, json_records, json_type_name, jsonl_records,
                   read_data_text)
from edgetune.errors import ConfigError, DataError

__all__ = ["SFT_FORMATS", "SftExample", "SftData", "think_answer", "load_sft",
           "to_prompt_completion"]

SFT_FORMATS = ("alpaca", "sharegpt", "messages", "cot")

_EXAMPLES = {
    "alpaca": '{"instruction": "...", "input": "", "output": "..."}',
    "sharegpt": '{"conversations": [{"from": "human", "value": "..."}, '
                '{"from": "gpt", "value": "..."}]}',
    "messages": '{"messages": [{"role": "user", "content": "..."}, '
                '{"role": "assistant", "content": "..."}]}',
    "cot": '{"Question": "...", "Complex_CoT": "...", "Response": "..."}',
}
_SHAPES = "\n".join(f"  {fmt}: {example}" for fmt, example in _EXAMPLES.items())
_FLAT = ("alpaca", "cot")   # a CSV row is flat columns, so it cannot hold a list of turns
_TURN_KEYS = {"sharegpt": "conversations", "messages": "messages"}
# medical-o1-reasoning-SFT capitalises its columns; other exports of the same shape do not.
_COT_KEYS = (("Question", "question"), ("Complex_CoT", "complex_cot"),
             ("Response", "response"))
_ROLES = {"system": "system", "user": "user", "human": "user",
          "assistant": "assistant", "gpt": "assistant"}


@dataclass(frozen=True)
class SftExample:
    messages: tuple[dict[str, str], ...]   # {"role", "content"} dicts; the last is the assistant
    source: str                            # "file.jsonl:12" -- used in messages


@dataclass(frozen=True)
class SftData:
    path: Path
    format: str                  # one of SFT_FORMATS: the detected or forced one
    examples: list[SftExample]
    skipped: int                 # records skipped for an empty user or assistant message


def think_answer(cot: str, answer: str) -> str:
    """The assistant text of a reasoning model: the chain of thought in a think block, then
    the answer -- the layout Qwen3 / DeepSeek-R1 chat templates expect."""
    return f"<think>\n{cot.strip()}\n</think>\n{answer.strip()}"


def to_prompt_completion(example: SftExample) -> dict:
    """A TRL conversational prompt-completion row, so the loss covers the last reply only."""
    return {"prompt": [dict(m) for m in example.messages[:-1]],
            "completion": [dict(example.messages[-1])]}


# --------------------------------------------------------------------------- shapes

def _cot_key(record: dict[str, Any], variants: tuple[str, str]) -> str | None:
    return next((key for key in variants if key in record), None)


def _matches(fmt: str, record: dict[str, Any]) -> bool:
    if fmt == "alpaca":
        return "instruction" in record and "output" in record
    if fmt == "cot":
        return all(_cot_key(record, variants) for variants in _COT_KEYS)
    return _TURN_KEYS[fmt] in record


def _detect(record: dict[str, Any], src: str) -> str:
    found = [fmt for fmt in SFT_FORMATS if _matches(fmt, record)]
    if not found:
        raise DataError(f"{src}: cannot tell the SFT format from the fields {record_fields(record)}",
                        f"Each record must have one of these shapes:\n{_SHAPES}")
    if len(found) > 1:
        raise DataError(f"{src}: the fields {record_fields(record)} fit several SFT formats "
                        f"({', '.join(found)})",
                        f"Choose one explicitly, e.g. format=\"{found[0]}\".")
    return found[0]


def _mismatch(fmt: str, record: dict[str, Any], src: str, detected_at: str | None) -> DataError:
    origin = f" detected from {detected_at}" if detected_at else ""
    looks = [other for other in SFT_FORMATS if _matches(other, record)]
    like = f" (it looks like '{looks[0]}')" if len(looks) == 1 else ""
    hint = f"Every record in a file must have the same shape; '{fmt}' is {_EXAMPLES[fmt]}."
    if not detected_at:
        hint += " Or leave the format on auto to detect it from the first record."
    return DataError(f"{src}: fields {record_fields(record)} do not fit the '{fmt}' format{origin}"
                     f"{like}", hint)


# --------------------------------------------------------------------------- records

def _string(value: Any, where: str, *, optional: bool = False) -> str:
    """Stripped text; ``where`` names the field for the message ("data.jsonl:3: field 'x'")."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string, got {json_type_name(value)}",
                        "Write every message as text.")
    return value.strip()


def _flat_turns(fmt: str, record: dict[str, Any], src: str) -> list[tuple[str, str, str]]:
    """(role, content, where) turns of an alpaca or cot record: one user, one assistant."""
    if fmt == "alpaca":
        instruction = _string(record["instruction"], f"{src}: field 'instruction'")
        extra = _string(record.get("input"), f"{src}: field 'input'", optional=True)
        user = "\n\n".join(part for part in (instruction, extra) if part)
        reply = _string(record["output"], f"{src}: field 'output'")
        return [("user", user, src), ("assistant", reply, src)]
    question, cot, response = (_cot_key(record, variants) for variants in _COT_KEYS)
    user = _string(record[question], f"{src}: field '{question}'")
    thought = _string(record[cot], f"{src}: field '{cot}'")
    answer = _string(record[response], f"{src}: field '{response}'")
    # An empty answer is an empty reply (skipped); an empty thought is kept as an empty block.
    return [("user", user, src), ("assistant", think_answer(thought, answer) if answer else "",
                                  src)]


def _list_turns(fmt: str, record: dict[str, Any], src: str) -> list[tuple[str, str, str]]:
    """(role, content, where) turns of a sharegpt or messages record, roles normalised."""
    key = _TURN_KEYS[fmt]
    turns = record[key]
    if not isinstance(turns, list):
        raise DataError(f"{src}: field '{key}' must be a list of turns, got {json_type_name(turns)}",
                        f"Write it like {_EXAMPLES[fmt]}.")
    result = []
    for index, turn in enumerate(turns):
        where = f"{src}: {key}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where} must be an object, got {json_type_name(turn)}",
                            f"Write it like {_EXAMPLES[fmt]}.")
        # ShareGPT exports use from/value, OpenAI-style ones role/content; accept either.
        role_key, content_key = ("role", "content") if "role" in turn else ("from", "value")
        if role_key not in turn or content_key not in turn:
            raise DataError(f"{where} needs 'from' and 'value' or 'role' and 'content', "
                            f"found {record_fields(turn)}", f"Write it like {_EXAMPLES[fmt]}.")
        name = turn[role_key]
        role = _ROLES.get(name.strip().lower()) if isinstance(name, str) else None
        if role is None:
            raise DataError(f"{where}: unknown role {name!r}",
                            "Use system, user or assistant (ShareGPT: human or gpt).")
        result.append((role, _string(turn[content_key], f"{where}.{content_key}"), where))
    return result


def _example(fmt: str, record: dict[str, Any], src: str, system_prompt: str) -> SftExample | None:
    """The conversation of one record, or None when it must be skipped for empty text."""
    system = _string(record.get("system"), f"{src}: field 'system'", optional=True)
    turns = (_flat_turns if fmt in _FLAT else _list_turns)(fmt, record, src)
    if turns and turns[0][0] == "system":
        if system and turns[0][1]:
            raise DataError(f"{src}: has a system message both in field 'system' and in "
                            f"{turns[0][2].removeprefix(src + ': ')}",
                            "Keep one of the two system messages.")
        system = system or turns[0][1]
        turns = turns[1:]
    for index, (role, _, where) in enumerate(turns):
        if role == "system":
            raise DataError(f"{where}: a system message after the start of the conversation",
                            "Only the first message may be a system message; merge it into "
                            "the first one or drop it.")
        if index == 0 and role != "user":
            raise DataError(f"{where}: the conversation starts with an assistant message",
                            "Start with a user message (after an optional system message).")
        if index and role == turns[index - 1][0]:
            raise DataError(f"{where}: two '{role}' messages in a row",
                            "Roles must alternate user / assistant; merge the two messages or "
                            "check the export for a dropped turn.")
    while turns and turns[-1][0] != "assistant":
        turns.pop()   # a trailing question has no reply to learn from
    if not turns:
        raise DataError(f"{src}: the conversation has no assistant message",
                        "Add the assistant's reply, or remove this record.")
    if any(not content for _, content, _ in turns):
        return None
    system = system or system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": role, "content": content} for role, content, _ in turns]
    return SftExample(messages=tuple(messages), source=src)


# --------------------------------------------------------------------------- files

def _csv_header(text: str) -> list[str] | None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for values in reader:
            if values:
                return [v.strip() for v in values]
    except csv.Error:
        pass   # csv_records reports it, with its line
    return None


def _records(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return jsonl_records(text, path.name)
    if suffix == ".json":
        return json_records(text, path.name) if text.strip() else iter(())
    # csv_records insists the question/answer columns are in the header; any header column
    # satisfies it, and the record shapes are checked here instead.
    header = _csv_header(text)
    columns = Columns(question=header[0], answer=header[0]) if header else Columns()
    return csv_records(text, path.name, columns)


def load_sft(path: str | Path, *, format: str = "auto", system_prompt: str = "") -> SftData:
    """Load SFT conversations from a .jsonl, .json or .csv file.

    ``format`` is one of SFT_FORMATS, or "auto" to detect it from the first record's fields.
    ``system_prompt`` becomes the first message of conversations that have no system message.
    """
    if format != "auto" and format not in SFT_FORMATS:
        raise ConfigError(f"unknown SFT format {format!r}",
                          f"Use auto or one of: {', '.join(SFT_FORMATS)}.")
    path = Path(path)
    text = read_data_text(path)
    is_csv = path.suffix.lower() == ".csv"
    csv_hint = (f"A CSV row holds flat columns, so only {' and '.join(_FLAT)} fit; save "
                f"conversations as .jsonl, one per line, e.g. {_EXAMPLES['messages']}")
    if is_csv and format not in _FLAT + ("auto",):
        raise DataError(f"{path}: the '{format}' format cannot be read from CSV", csv_hint)

    fmt = None if format == "auto" else format
    detected_at: str | None = None
    examples: list[SftExample] = []
    skipped = 0
    for src, record in _records(path, text):
        if isinstance(record, DataError):
            raise record
        if not isinstance(record, dict):
            raise DataError(f"{src}: expected an object, got {json_type_name(record)}",
                            f"Each record must have one of these shapes:\n{_SHAPES}")
        if fmt is None:
            fmt, detected_at = _detect(record, src), src
            if is_csv and fmt not in _FLAT:
                raise DataError(f"{src}: the '{fmt}' format cannot be read from CSV", csv_hint)
        if not _matches(fmt, record):
            raise _mismatch(fmt, record, src, detected_at)
        example = _example(fmt, record, src, system_prompt.strip())
        if example is None:
            skipped += 1
        else:
            examples.append(example)

    if fmt is None:
        raise DataError(f"{path}: has no records",
                        f"Add at least one record, in one of these shapes:\n{_SHAPES}")
    if not examples:
        raise DataError(f"{path}: every record has an empty user or assistant message "
                        f"({skipped} skipped)",
                        "Fill in the questions and replies, or check the field names.")
    return SftData(path=path, format=fmt, examples=examples, skipped=skipped)
