"""Load creators' question/answer data and split it into train, eval and calibration sets.

Formats by extension: ``.jsonl`` (one object per line, blank lines ignored; rows named
``file.jsonl:17``), ``.json`` (a list of objects or ``{"data": [...]}``; rows named
``file.json:[3]``, a 0-based index) and ``.csv`` (header row = line 1; a quoted field spanning
lines is named by its starting line). GSM8K answers (``"...work... #### 42"``) are split at the
last ``####`` into answer and reasoning. Every problem is a DataError naming file, line and field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune import strict_json
from edgetune.errors import ConfigError, DataError

__all__ = ["QARow", "Columns", "LoadedData", "Splits", "load_qa", "split_qa", "write_jsonl"]

GSM8K_MARKER = "####"
_FORMATS = (".jsonl", ".json", ".csv")
# Characters of question + answer + reasoning in one row. Far above any small model's context
# (32k tokens are about 130k characters of English, but rows are questions, not books); it
# stops a runaway cell (a whole file pasted into one question) with its line, not an OOM.
MAX_ROW_CHARS = 100_000
# C0 and C1 control characters but tab, line feed and carriage return: a NUL or an escape
# sequence in a question ends up in prompts, the tokenizer and the bundle's files.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class QARow:
    question: str
    answer: str                # the final answer only (GSM8K "...#### 42" -> "42")
    reasoning: str | None      # worked solution if any, else None
    source: str                # "file.jsonl:17" or "file.json:[3]" -- used in messages


@dataclass(frozen=True)
class Columns:
    question: str = "question"
    answer: str = "answer"
    reasoning: str | None = None   # optional column holding reasoning / chain of thought


@dataclass(frozen=True)
class LoadedData:
    rows: tuple[QARow, ...]
    skipped: tuple[str, ...]   # one message per skipped bad row (only with skip_bad_rows=True)
    dropped: tuple[str, ...] = ()  # one note per row that repeated an earlier one exactly


@dataclass(frozen=True)
class Splits:
    train: tuple[QARow, ...]
    eval: tuple[QARow, ...]          # held out: never used for training or calibration
    calibration: tuple[QARow, ...]   # subset of train used to calibrate quantisation (imatrix)


# --------------------------------------------------------------------------- loading

_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               str: "a string", list: "a list", dict: "an object"}


def json_type_name(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def record_fields(record: dict[str, Any]) -> str:
    return ", ".join(repr(str(k)) for k in record) or "(none)"


def _text(record: dict[str, Any], field: str, role: str, src: str) -> str:
    """The stripped, non-empty text of a required field (question or answer)."""
    if field not in record:
        raise DataError(f"{src}: field '{field}' is missing",
                        f"Fields in this row: {record_fields(record)}. Use --question-field / "
                        f"--answer-field to name the fields holding the question and answer.")
    value = record[field]
    if value is None:
        raise DataError(f"{src}: field '{field}' is null",
                        f"Give every row a {role}, or remove this row.")
    if role == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise DataError(f"{src}: field '{field}' is not a finite number",
                            "Write the answer as a string or a finite number.")
        return str(value)
    if not isinstance(value, str):
        allowed = "a string or a number" if role == "answer" else "a string"
        raise DataError(f"{src}: field '{field}' must be {allowed}, got {json_type_name(value)}",
                        f"Write the {role} as text, e.g. \"{field}\": \"...\".")
    if not value.strip():
        raise DataError(f"{src}: field '{field}' is empty",
                        f"Fill in the {role} or remove this row.")
    _check_characters(value, field, src)
    return value.strip()


def _check_characters(value: str, field: str, src: str) -> None:
    if found := _CONTROL.search(value):
        raise DataError(f"{src}: field '{field}' has a control character "
                        f"(U+{ord(found.group()):04X} at character {found.start() + 1})",
                        "Remove it (tabs and line breaks are fine): control characters end up "
                        "in the model's prompts and in the bundle.")


def _row(record: Any, columns: Columns, src: str, max_chars: int = MAX_ROW_CHARS) -> QARow:
    if not isinstance(record, dict):
        raise DataError(f"{src}: expected an object, got {json_type_name(record)}",
                        f"Each row must be an object like "
                        f"{{\"{columns.question}\": \"...\", \"{columns.answer}\": \"...\"}}.")
    question = _text(record, columns.question, "question", src)
    answer = _text(record, columns.answer, "answer", src)
    reasoning: str | None = None
    if columns.reasoning is not None:
        value = record.get(columns.reasoning)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{src}: field '{columns.reasoning}' must be a string, "
                            f"got {json_type_name(value)}",
                            "Write the reasoning as text, or leave it out / null.")
        reasoning = value.strip() if value and value.strip() else None
        if reasoning is not None:
            _check_characters(reasoning, columns.reasoning, src)
    if GSM8K_MARKER in answer:
        before, _, after = answer.rpartition(GSM8K_MARKER)
        answer = after.strip()
        if not answer:
            raise DataError(f"{src}: field '{columns.answer}' has nothing after '####'",
                            "GSM8K-style answers end with '#### <final answer>'; add the final "
                            "answer after '####'.")
        if reasoning is None:
            reasoning = before.strip() or None
    size = len(question) + len(answer) + len(reasoning or "")
    if size > max_chars:
        raise DataError(f"{src}: row is {size:,} characters long, over the limit of {max_chars:,}",
                        "A row is one question and its answer: split or shorten it (a cell "
                        "holding a whole file is the usual cause).")
    return QARow(question=question, answer=answer, reasoning=reasoning, source=src)


def read_data_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: file not found",
                        "Check the path; it is relative to the current directory.")
    suffix = path.suffix.lower()
    if suffix not in _FORMATS and not path.is_dir():
        raise DataError(f"{path}: unsupported file type '{suffix or '(no extension)'}'",
                        "Use .jsonl (one JSON object per line), .json (a list of objects) "
                        "or .csv (with a header row).")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})",
                        "Pass a readable .jsonl, .json or .csv file.") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]   # utf-8-sig: accept a byte-order mark
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path.name}:{line}: not valid UTF-8 text",
                        "Save the file with UTF-8 encoding (e.g. 'Save As' > Encoding: UTF-8)."
                        ) from None


def jsonl_records(text: str, name: str) -> Iterator[tuple[str, Any]]:
    """Yields (source, record-or-DataError); bad JSON on one line is a row error."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        src = f"{name}:{number}"
        try:  # strictly: duplicate keys, depth and number size (mobile_bundle/SPEC.md)
            record = strict_json.loads(line, strict_json.DATA_ROW)
        except strict_json.JsonRejected as exc:
            yield src, DataError(f"{src}: not valid JSON ({exc.why})",
                                 f"Each line must be one complete JSON object; the problem is "
                                 f"at column {exc.colno}." if exc.colno else
                                 "Each line must be one JSON object of questions and answers.")
        else:
            yield src, record


def json_records(text: str, name: str) -> Iterator[tuple[str, Any]]:
    try:
        doc = strict_json.loads(text, strict_json.DATA_FILE)
    except strict_json.JsonRejected as exc:
        raise DataError(f"{name}{f':{exc.lineno}' if exc.lineno else ''}: not valid JSON "
                        f"({exc.why})",
                        f"Fix the JSON syntax at line {exc.lineno}, column {exc.colno}."
                        if exc.lineno else "Use plain JSON: a list of objects of questions "
                        "and answers.") from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        found = (f"an object with fields {record_fields(doc)}" if isinstance(doc, dict)
                 else json_type_name(doc))
        raise DataError(f"{name}: expected a list of rows or an object with a \"data\" list, "
                        f"got {found}",
                        "Wrap the rows in a list: [{\"question\": ..., \"answer\": ...}, ...].")
    for index, record in enumerate(doc):
        yield f"{name}:[{index}]", record


def csv_records(text: str, name: str, columns: Columns) -> Iterator[tuple[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    header: list[str] | None = None
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{name}:{start}: not valid CSV ({exc})",
                            "Check the quoting: a field containing commas, quotes or line breaks "
                            "must be wrapped in double quotes, with inner quotes doubled (\"\")."
                            ) from None
        src, start = f"{name}:{start}", reader.line_num + 1
        if not values:
            continue   # blank line
        if header is None:
            header = [v.strip() for v in values]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(f"{src}: column '{dupes[0]}' appears more than once in the header",
                                "Give every column a distinct name.")
            for role in ("question", "answer", "reasoning"):
                column = getattr(columns, role)
                if column is not None and column not in header:
                    raise DataError(f"{src}: {role} column '{column}' not found in the header "
                                    f"(columns: {', '.join(repr(h) for h in header)})",
                                    "Rename the header, or use --question-field / --answer-field "
                                    "to name the columns holding the question and answer.")
            continue
        if len(values) != len(header):
            yield src, DataError(f"{src}: has {len(values)} values but the header has "
                                 f"{len(header)} columns",
                                 "Quote fields that contain commas, and give every row one value "
                                 "per column.")
            continue
        yield src, dict(zip(header, values))


def load_qa(path: str | Path, columns: Columns = Columns(), *,
            skip_bad_rows: bool = False, max_chars: int = MAX_ROW_CHARS) -> LoadedData:
    """Load question/answer rows from a .jsonl, .json or .csv file.

    A bad row (a missing or empty field, a control character, over ``max_chars``: pass the
    model's context in characters where it is known) raises DataError; with
    ``skip_bad_rows=True`` it is skipped and its message kept in ``skipped``. File-level problems
    (unreadable, not UTF-8, broken JSON document or CSV quoting, CSV header lacking a column, no
    rows, every row bad, reasoning field in no row, one question with two answers) always raise.
    A row repeating an earlier one exactly (question and answer, ignoring case and spacing) is
    dropped, with a note in ``dropped``.
    """
    path = Path(path)
    text = read_data_text(path)
    name = path.name
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = jsonl_records(text, name)
    elif suffix == ".json":
        records = json_records(text, name) if text.strip() else iter(())
    else:
        records = csv_records(text, name, columns)

    rows: list[QARow] = []
    skipped: list[str] = []
    first_error: DataError | None = None
    saw_reasoning = False
    for src, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            rows.append(_row(record, columns, src, max_chars))
            saw_reasoning = saw_reasoning or columns.reasoning in record
        except DataError as exc:
            if not skip_bad_rows:
                raise
            first_error = first_error or exc
            skipped.append(exc.message)

    if first_error is not None and not rows:
        raise DataError(f"{path}: every row is invalid ({len(skipped)} skipped); "
                        f"first problem: {first_error.message}", first_error.hint)
    if not rows:
        raise DataError(f"{path}: has no rows",
                        "Add at least one row with a question and an answer.")
    if columns.reasoning is not None and suffix != ".csv" and not saw_reasoning:
        raise DataError(f"{path}: field '{columns.reasoning}' (reasoning) is in no row",
                        "Check the reasoning field name, or leave it unset.")
    rows, dropped = _without_repeats(rows)
    return LoadedData(rows=tuple(rows), skipped=tuple(skipped), dropped=tuple(dropped))


def _without_repeats(rows: list[QARow]) -> tuple[list[QARow], list[str]]:
    """Rows with exact repeats dropped (noted); the same question with another answer stops
    with both lines, every such pair at once (20 shown): the reward would teach both."""
    first: dict[str, QARow] = {}
    kept: list[QARow] = []
    dropped: list[str] = []
    conflicts: list[str] = []
    for row in rows:
        earlier = first.setdefault(_normalise(row.question), row)
        if earlier is row:
            kept.append(row)
        elif _normalise(earlier.answer) == _normalise(row.answer):
            dropped.append(f"{row.source} repeats {earlier.source} (same question and answer): "
                           "dropped")
        else:
            conflicts.append(f"{row.source} has the question of {earlier.source} with another "
                             f"answer ({row.answer[:40]!r} here, {earlier.answer[:40]!r} there)")
    if conflicts:
        more = f" (and {len(conflicts) - 20} more)" if len(conflicts) > 20 else ""
        raise DataError("; ".join(conflicts[:20]) + more,
                        "Keep one answer per question: remove or correct the wrong rows.")
    return kept, dropped


# --------------------------------------------------------------------------- splitting

def _normalise(question: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", question).split()).casefold()


def _position(salt: str, question: str) -> float:
    """Where a question falls in [0, 1): a stable hash of salt + normalised question."""
    digest = hashlib.sha256((salt + _normalise(question)).encode("utf-8")).hexdigest()
    return int(digest, 16) / 2 ** 256


def split_qa(rows: Sequence[QARow], *, eval_fraction: float = 0.1,
             calibration_fraction: float = 0.2, salt: str = "edgetune") -> Splits:
    """Split rows into train / eval, and pick calibration rows from train.

    A row goes to eval iff the hash of ``salt + normalised question`` maps below
    ``eval_fraction``: identical questions (ignoring case and whitespace) always share a split,
    and adding rows never moves existing ones. Calibration rows are the train rows selected the
    same way with salt ``salt + ":calibration"``.

    Small-data fallbacks (these may move a row once more rows are added): if the hash puts no
    question in eval, the question with the smallest hash goes to eval (all its rows); if it
    puts every question in eval, the one with the largest hash goes to train; if no train row
    is selected for calibration, the train row with the smallest calibration hash is used.
    """
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be above 0 and below 1, got {eval_fraction}",
                          "Use e.g. 0.1 to hold out 10% of the questions for evaluation.")
    if not 0 < calibration_fraction <= 1:
        raise ConfigError(f"calibration_fraction must be above 0 and at most 1, "
                          f"got {calibration_fraction}",
                          "Use e.g. 0.2 to calibrate on 20% of the training rows.")
    if len(rows) < 2:
        raise DataError(f"need at least 2 rows to split into train and eval, got {len(rows)}",
                        "Add more question/answer rows.")
    position = {q: _position(salt, q) for q in {_normalise(r.question) for r in rows}}
    if len(position) < 2:
        raise DataError(f"all {len(rows)} rows have the same question; need at least 2 distinct "
                        f"questions to split into train and eval",
                        "Add rows with different questions.")
    held_out = {q for q, p in position.items() if p < eval_fraction}
    if not held_out:
        held_out = {min(position, key=position.__getitem__)}
    elif len(held_out) == len(position):
        held_out.remove(max(position, key=position.__getitem__))

    train = tuple(r for r in rows if _normalise(r.question) not in held_out)
    evaluation = tuple(r for r in rows if _normalise(r.question) in held_out)
    calibration_salt = salt + ":calibration"
    calibration = tuple(r for r in train
                        if _position(calibration_salt, r.question) < calibration_fraction)
    if not calibration:
        calibration = (min(train, key=lambda r: _position(calibration_salt, r.question)),)
    return Splits(train=train, eval=evaluation, calibration=calibration)


def write_jsonl(rows: Iterable[QARow], path: Path) -> None:
    """Write rows as JSON lines (question, answer, reasoning), atomically, for reproducibility."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            record = {"question": row.question, "answer": row.answer, "reasoning": row.reasoning}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
