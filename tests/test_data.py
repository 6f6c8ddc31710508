from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgetune.data import Columns, LoadedData, QARow, Splits, load_qa, split_qa, write_jsonl
from edgetune.errors import ConfigError, DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *records: object) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def error(path: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_qa(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.hint, "every DataError needs a hint"
    return info.value


# ----------------------------------------------------------------------------- formats

def test_jsonl_loads_with_sources_and_ignores_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl",
                 '{"question": "What is 2+2?", "answer": "4"}\n'
                 "\n   \n"
                 '{"question": "  Capital of France? ", "answer": " Paris "}\n')
    loaded = load_qa(path)
    assert loaded == LoadedData(rows=(
        QARow("What is 2+2?", "4", None, "data.jsonl:1"),
        QARow("Capital of France?", "Paris", None, "data.jsonl:4"),
    ), skipped=())


def test_json_list_and_data_object(tmp_path: Path) -> None:
    rows = [{"question": "a?", "answer": "1"}, {"question": "b?", "answer": "2"}]
    for name, doc in (("list.json", rows), ("wrapped.json", {"data": rows, "version": 2})):
        loaded = load_qa(write(tmp_path / name, json.dumps(rows if name == "list.json" else doc)))
        assert [(r.question, r.answer, r.source) for r in loaded.rows] == [
            ("a?", "1", f"{name}:[0]"), ("b?", "2", f"{name}:[1]")]


def test_csv_counts_header_as_line_1_and_multiline_fields_by_start(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv",
                 'question,answer\n'
                 'plain?,1\n'
                 '"multi\nline, with comma?",2\n'
                 '\n'
                 'last?,"3"\r\n')
    rows = load_qa(path).rows
    assert [(r.question, r.answer, r.source) for r in rows] == [
        ("plain?", "1", "data.csv:2"),
        ("multi\nline, with comma?", "2", "data.csv:3"),
        ("last?", "3", "data.csv:6"),
    ]


def test_utf8_bom_and_non_ascii_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("question,answer\nCombien font 2×3 ?,six — 6\n".encode("utf-8-sig"))
    assert load_qa(path).rows == (QARow("Combien font 2×3 ?", "six — 6", None, "data.csv:2"),)


def test_custom_columns_including_reasoning(tmp_path: Path) -> None:
    cols = Columns(question="prompt", answer="target", reasoning="cot")
    path = jsonl(tmp_path / "d.jsonl",
                 {"prompt": "p1", "target": "t1", "cot": "because"},
                 {"prompt": "p2", "target": "t2"},
                 {"prompt": "p3", "target": "t3", "cot": None})
    rows = load_qa(path, cols).rows
    assert [(r.question, r.answer, r.reasoning) for r in rows] == [
        ("p1", "t1", "because"), ("p2", "t2", None), ("p3", "t3", None)]
    csv_path = write(tmp_path / "d.csv", "prompt,cot,target\np1,,t1\np2, why ,t2\n")
    assert [(r.question, r.answer, r.reasoning) for r in load_qa(csv_path, cols).rows] == [
        ("p1", "t1", None), ("p2", "t2", "why")]


def test_numeric_answers_are_converted(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"question": "a", "answer": 42},
                 {"question": "b", "answer": 3.5}, {"question": "c", "answer": -7})
    assert [r.answer for r in load_qa(path).rows] == ["42", "3.5", "-7"]


# ----------------------------------------------------------------------------- GSM8K

def test_gsm8k_answer_is_split_at_last_marker(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "gsm.jsonl",
                 {"question": "q1", "answer": "She sold 48/2 = <<48/2=24>>24.\n48+24 = 72\n#### 72"},
                 {"question": "q2", "answer": "Step #### not final\n#### 1,234 "},
                 {"question": "q3", "answer": "####5"})
    rows = load_qa(path).rows
    assert [(r.answer, r.reasoning) for r in rows] == [
        ("72", "She sold 48/2 = <<48/2=24>>24.\n48+24 = 72"),
        ("1,234", "Step #### not final"),
        ("5", None),
    ]


def test_gsm8k_reasoning_column_wins_when_non_empty(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "gsm.jsonl",
                 {"question": "q1", "answer": "inline\n#### 3", "why": "column"},
                 {"question": "q2", "answer": "inline\n#### 4", "why": "  "})
    rows = load_qa(path, Columns(reasoning="why")).rows
    assert [(r.answer, r.reasoning) for r in rows] == [("3", "column"), ("4", "inline")]


# ----------------------------------------------------------------------------- errors

def test_missing_field_names_line_field_and_present_fields(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "data.jsonl", *([{"question": "q", "answer": "a"}] * 6),
                 {"question": "q", "reply": "a"})
    exc = error(path)
    assert exc.message == "data.jsonl:7: field 'answer' is missing"
    assert exc.hint == ("Fields in this row: 'question', 'reply'. Use --question-field / "
                        "--answer-field to name the fields holding the question and answer.")
    exc = error(path, columns=Columns(question="prompt"))
    assert exc.message == "data.jsonl:1: field 'prompt' is missing"


def test_invalid_json_line(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"question": "a", "answer": "b"}\n\n'
                 '{"question": "a" "answer": "b"}\n')
    exc = error(path)
    assert exc.message == "data.jsonl:3: not valid JSON (Expecting ',' delimiter)"
    assert "column 18" in (exc.hint or "")


def test_invalid_json_document_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "data.json", '[\n {"question": "a", "answer": "b"},\n]\n')
    assert error(path).message == "data.json:3: not valid JSON (Expecting value)"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    exc = error(tmp_path / "nope.jsonl")
    assert exc.message == f"{tmp_path / 'nope.jsonl'}: file not found"
    assert "Check the path" in (exc.hint or "")
    assert error(tmp_path).message == f"{tmp_path}: cannot be read (Is a directory)"
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert error(folder).message == f"{folder}: cannot be read (Is a directory)"


@pytest.mark.parametrize("name, shown", [("data.txt", "'.txt'"), ("data", "'(no extension)'")])
def test_unsupported_extension(tmp_path: Path, name: str, shown: str) -> None:
    exc = error(write(tmp_path / name, "question,answer\nq,a\n"))
    assert exc.message == f"{tmp_path / name}: unsupported file type {shown}"
    assert all(ext in (exc.hint or "") for ext in (".jsonl", ".json", ".csv"))


@pytest.mark.parametrize("name, text", [
    ("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.json", ""), ("e.json", "[]"),
    ("e.json", '{"data": []}'), ("e.csv", ""), ("e.csv", "question,answer\n"),
])
def test_no_rows(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    assert error(path).message == f"{path}: has no rows"
    assert error(path, skip_bad_rows=True).message == f"{path}: has no rows"


def test_row_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "a"}\n["q", "a"]\n')
    assert error(path).message == "d.jsonl:2: expected an object, got a list"
    path = write(tmp_path / "d.json", '[{"question": "q", "answer": "a"}, "q: a"]')
    assert error(path).message == "d.json:[1]: expected an object, got a string"
    path = write(tmp_path / "top.json", '{"rows": []}')
    assert error(path).message == (f"top.json: expected a list of rows or an object with a "
                                   f"\"data\" list, got an object with fields 'rows'")


@pytest.mark.parametrize("record, message", [
    ({"question": "", "answer": "a"}, "d.jsonl:2: field 'question' is empty"),
    ({"question": "q", "answer": " \t\n"}, "d.jsonl:2: field 'answer' is empty"),
    ({"question": "q", "answer": None}, "d.jsonl:2: field 'answer' is null"),
    ({"question": 5, "answer": "a"}, "d.jsonl:2: field 'question' must be a string, got a number"),
    ({"question": "q", "answer": True},
     "d.jsonl:2: field 'answer' must be a string or a number, got a boolean"),
    ({"question": "q", "answer": ["a"]},
     "d.jsonl:2: field 'answer' must be a string or a number, got a list"),
    ({"question": "q", "answer": "work\n####  "}, "d.jsonl:2: field 'answer' has nothing after '####'"),
    ({"question": "q", "answer": "a", "r": 3}, "d.jsonl:2: field 'r' must be a string, got a number"),
    ({"question": "q", "answer": float("nan")}, "d.jsonl:2: field 'answer' is not a finite number"),
    ({}, "d.jsonl:2: field 'question' is missing"),
])
def test_bad_values(tmp_path: Path, record: dict[str, object], message: str) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"question": "ok", "answer": "ok", "r": "x"}, record)
    assert error(path, columns=Columns(reasoning="r")).message == message


def test_csv_empty_answer_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'question,answer\n"two\nlines",1\nq,  \n')
    assert error(path).message == "d.csv:4: field 'answer' is empty"


def test_csv_header_lacking_column_is_reported_once_as_line_1(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "q,a\nx,1\ny,2\n")
    exc = error(path, skip_bad_rows=True)
    assert exc.message == "d.csv:1: question column 'question' not found in the header (columns: 'q', 'a')"
    assert "--question-field" in (exc.hint or "") and "--answer-field" in (exc.hint or "")
    exc = error(path, columns=Columns(question="q", answer="a", reasoning="why"))
    assert exc.message == "d.csv:1: reasoning column 'why' not found in the header (columns: 'q', 'a')"


def test_csv_structure_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'question,answer\nok,1\n"multi\nline",1,extra\n')
    assert error(path).message == "d.csv:3: has 3 values but the header has 2 columns"
    path = write(tmp_path / "d.csv", 'question,answer\nok,1\n"never closed,1\nq,2\n')
    assert error(path).message == "d.csv:3: not valid CSV (unexpected end of data)"
    path = write(tmp_path / "d.csv", "question,answer,question\nq,a,b\n")
    assert error(path).message == "d.csv:1: column 'question' appears more than once in the header"


def test_reasoning_field_in_no_row(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"question": "q", "answer": "a"})
    assert error(path, columns=Columns(reasoning="rationale")).message == (
        f"{path}: field 'rationale' (reasoning) is in no row")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("question,answer\nq,a\ncafé?,b\n".encode("latin-1"))
    exc = error(path)
    assert exc.message == "d.csv:3: not valid UTF-8 text"
    assert "UTF-8" in (exc.hint or "")


# ----------------------------------------------------------------------------- skip_bad_rows

def test_skip_bad_rows_lists_each_skipped_row(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl",
                 '{"question": "q1", "answer": "a1"}\n'
                 '{"question": "q2", "answer": ""}\n'
                 'not json\n'
                 '{"question": "q4", "answer": "a4"}\n'
                 '{"question": "q5"}\n')
    loaded = load_qa(path, skip_bad_rows=True)
    assert [r.source for r in loaded.rows] == ["d.jsonl:1", "d.jsonl:4"]
    assert loaded.skipped == ("d.jsonl:2: field 'answer' is empty",
                              "d.jsonl:3: not valid JSON (Expecting value)",
                              "d.jsonl:5: field 'answer' is missing")
    assert error(path).message == "d.jsonl:2: field 'answer' is empty"


def test_skip_bad_rows_raises_when_every_row_is_bad(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"question": "q"}, {"question": "", "answer": "a"})
    assert error(path, skip_bad_rows=True).message == (
        f"{path}: every row is invalid (2 skipped); first problem: "
        "d.jsonl:1: field 'answer' is missing")


def test_skip_bad_rows_still_raises_file_level_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '[{"question": "q", "answer": "a"},]')
    assert error(path, skip_bad_rows=True).message.startswith("d.json:1: not valid JSON")
    assert error(tmp_path / "missing.csv", skip_bad_rows=True).message.endswith("file not found")


# ----------------------------------------------------------------------------- splitting

def make_rows(n: int, start: int = 0) -> list[QARow]:
    return [QARow(f"Question number {i}?", str(i), None, f"d.jsonl:{i + 1}")
            for i in range(start, start + n)]


def position(salt: str, question: str) -> float:
    """Independent re-statement of the documented rule, for simple lower-case questions."""
    return int(hashlib.sha256((salt + question).encode()).hexdigest(), 16) / 2 ** 256


def test_split_follows_documented_hash_rule() -> None:
    rows = make_rows(300)
    splits = split_qa(rows, eval_fraction=0.2, calibration_fraction=0.3, salt="s")
    expected_eval = [r for r in rows if position("s", r.question.lower()) < 0.2]
    assert list(splits.eval) == expected_eval
    assert list(splits.train) == [r for r in rows if r not in expected_eval]
    assert list(splits.calibration) == [
        r for r in splits.train if position("s:calibration", r.question.lower()) < 0.3]
    assert 30 < len(splits.eval) < 90 and 40 < len(splits.calibration) < 110


def test_split_is_deterministic_and_salt_dependent() -> None:
    rows = make_rows(200)
    assert split_qa(rows) == split_qa(list(rows))
    assert split_qa(rows).eval != split_qa(rows, salt="other").eval


def test_split_is_stable_when_rows_are_appended() -> None:
    before = split_qa(make_rows(100))
    after = split_qa(make_rows(100) + make_rows(150, start=100))
    assert set(before.eval) == set(after.eval) & set(make_rows(100))
    assert set(before.train) == set(after.train) & set(make_rows(100))
    assert set(before.calibration) == set(after.calibration) & set(make_rows(100))
    assert len(after.eval) > len(before.eval)


def test_split_has_no_overlap_and_calibration_is_subset_of_train() -> None:
    rows = make_rows(500)
    rows += [QARow(f"  QUESTION   number {i}? ", "x", None, f"dup:{i}") for i in range(50)]
    splits = split_qa(rows)
    eval_q = {" ".join(r.question.lower().split()) for r in splits.eval}
    train_q = {" ".join(r.question.lower().split()) for r in splits.train}
    assert len(eval_q | train_q) == 500
    assert not eval_q & train_q, "identical (normalised) questions must share a split"
    assert set(splits.calibration) <= set(splits.train)
    assert not set(splits.calibration) & set(splits.eval)
    assert sorted(splits.train + splits.eval, key=rows.index) == rows


def test_split_minimum_sizes_with_fallbacks() -> None:
    two = make_rows(2)
    for fraction in (1e-12, 1 - 1e-12):
        splits = split_qa(two, eval_fraction=fraction, calibration_fraction=1e-12)
        assert len(splits.eval) == 1 and len(splits.train) == 1 and len(splits.calibration) == 1
        assert set(splits.eval) | set(splits.train) == set(two)
    smallest = min(two, key=lambda r: position("edgetune", r.question.lower()))
    assert split_qa(two, eval_fraction=1e-12).eval == (smallest,)


def test_split_rejects_too_few_rows_and_bad_fractions() -> None:
    with pytest.raises(DataError) as info:
        split_qa(make_rows(1))
    assert info.value.message == "need at least 2 rows to split into train and eval, got 1"
    same = [QARow("Same?", "1", None, "a"), QARow("  same? ", "2", None, "b")]
    with pytest.raises(DataError) as info:
        split_qa(same)
    assert info.value.message.startswith("all 2 rows have the same question")
    for bad in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            split_qa(make_rows(10), eval_fraction=bad)
    for bad in (0, 1.01):
        with pytest.raises(ConfigError):
            split_qa(make_rows(10), calibration_fraction=bad)


def test_splits_type() -> None:
    assert isinstance(split_qa(make_rows(5)), Splits)


# ----------------------------------------------------------------------------- write_jsonl

def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    rows = [QARow("Wie viel ist 2×3?", "6", "2×3 = 6", "x:1"), QARow("q", "a", None, "x:2")]
    out = tmp_path / "artifacts" / "eval.jsonl"
    write_jsonl(iter(rows), out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"question": "Wie viel ist 2×3?", "answer": "6",
                                    "reasoning": "2×3 = 6"}
    assert "×" in lines[0]
    loaded = load_qa(out, Columns(reasoning="reasoning")).rows
    assert [(r.question, r.answer, r.reasoning) for r in loaded] == [
        (r.question, r.answer, r.reasoning) for r in rows]
    assert list(tmp_path.joinpath("artifacts").iterdir()) == [out]


# ----------------------------------------------------------------------------- bad data (issue 19)

def test_one_question_with_two_answers_stops_with_both_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "qa.jsonl", {"question": "What is 1+1?", "answer": "2"},
                 {"question": "What is 2+2?", "answer": "4"},
                 {"question": "What is 1+1?", "answer": "3"},
                 {"question": "  WHAT is 1+1? ", "answer": 999})
    err = error(path)
    assert err.message == ("qa.jsonl:3 has the question of qa.jsonl:1 with another answer ('3' "
                           "here, '2' there); qa.jsonl:4 has the question of qa.jsonl:1 with "
                           "another answer ('999' here, '2' there)")
    with pytest.raises(DataError):  # not a bad row: skipping rows does not hide it
        load_qa(path, skip_bad_rows=True)


def test_an_exact_repeat_is_dropped_with_a_note(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "qa.jsonl", {"question": "What is 1+1?", "answer": "2"},
                 {"question": "What is 2+2?", "answer": "4"},
                 {"question": "what is  1+1?", "answer": " 2"})
    loaded = load_qa(path)
    assert [r.source for r in loaded.rows] == ["qa.jsonl:1", "qa.jsonl:2"]
    assert loaded.dropped == ("qa.jsonl:3 repeats qa.jsonl:1 (same question and answer): "
                              "dropped",)


@pytest.mark.parametrize("text, where", [
    ("question,answer\nWhat\0 is 2+2?,4\n", "qa.csv:2: field 'question' has a control character "
                                            "(U+0000 at character 5)"),
    ("question,answer\nWhat is 2+2?,4\x1b[2K\n", "qa.csv:2: field 'answer' has a control "
                                                 "character (U+001B at character 2)"),
])
def test_control_characters_stop_with_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    assert error(write(tmp_path / "qa.csv", text)).message == where


def test_tabs_and_line_breaks_are_text(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "qa.jsonl", {"question": "Pace?\tkm\r\nmile", "answer": "5:00"})
    assert load_qa(path).rows[0].question == "Pace?\tkm\r\nmile"


def test_a_row_over_the_limit_stops_with_its_line(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "qa.jsonl", {"question": "Hi?", "answer": "1"},
                 {"question": "x" * 2_000, "answer": "2"})
    assert error(path, max_chars=1_000).message == (
        "qa.jsonl:2: row is 2,001 characters long, over the limit of 1,000")
    assert len(load_qa(path).rows) == 2  # the default is generous
