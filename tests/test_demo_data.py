"""The built-in demo dataset: reproducible, well-formed, arithmetically correct."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from edgetune.demo import DEMO_DATA, DEMO_DIR, DEMO_NAME, SYSTEM_PROMPT
from edgetune.demo import questions as q

EQ_CHARS = re.compile(r"^[\d\s.+\-*/()]+$")
PERCENT_OF = re.compile(r"(\d+(?:\.\d+)?)% of (\d+(?:\.\d+)?)")


def _shipped() -> list[dict]:
    lines = DEMO_DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _split(answer: str) -> tuple[list[str], str]:
    reasoning, final = answer.split("####")
    return [ln for ln in reasoning.strip().splitlines()], final.strip()


def _value(expr: str) -> float:
    expr = PERCENT_OF.sub(r"(\2 * \1 / 100)", expr.strip())
    if not EQ_CHARS.match(expr):
        raise ValueError(f"not an arithmetic expression: {expr!r}")
    return float(eval(expr, {"__builtins__": {}}, {}))  # only digits, operators, parens


def _equations(line: str) -> list[list[str]]:
    """The equations on a line ("a op b = c", "x = y = z", "p = q and r = s."),
    each as its '='-separated sides; parts that contain words are skipped."""
    out = []
    for part in line.rstrip(".").split(" and "):
        if "=" not in part:
            continue
        sides = part.split("=")
        if all(EQ_CHARS.match(PERCENT_OF.sub("0", s.strip())) for s in sides):
            out.append(sides)
    return out


def _check_equations(answer: str) -> int:
    lines, _ = _split(answer)
    checked = 0
    for line in lines:
        for sides in _equations(line):
            values = [_value(s) for s in sides]
            assert all(math.isclose(v, values[0]) for v in values), f"wrong equation {line!r}"
            checked += 1
    return checked


# ---- the shipped file -------------------------------------------------------------------

def test_shipped_file_is_reproducible():
    assert DEMO_DATA == DEMO_DIR / "data" / "questions.jsonl"
    assert _shipped() == q.generate(), "run `python -m edgetune.demo.questions` to regenerate"


def test_generate_is_deterministic_and_seeded():
    assert q.generate(seed=7, n=50) == q.generate(seed=7, n=50)
    assert q.generate(seed=1, n=50) != q.generate(seed=2, n=50)
    assert len(q.generate(n=20)) == 20
    assert q.generate(n=20) == q.generate()[:20]


def test_enough_rows_and_unique_questions():
    rows = _shipped()
    assert len(rows) >= 300
    assert all(set(r) == {"question", "answer"} for r in rows)
    questions = [r["question"] for r in rows]
    assert len(set(questions)) == len(questions)


def test_famous_question_first_with_right_answer():
    rows = _shipped()
    assert rows[0]["question"] == "Which is larger, 9.9 or 9.11?"
    matches = [r for r in rows if r["question"] == "Which is larger, 9.9 or 9.11?"]
    assert len(matches) == 1
    assert _split(matches[0]["answer"])[1] == "9.9"


def test_every_answer_has_one_numeric_final_answer():
    for r in _shipped():
        assert r["answer"].count("####") == 1, r
        lines, final = _split(r["answer"])
        assert 1 <= len(lines) <= 3, r
        float(final)  # parses
        assert not final.endswith(".0"), r
        assert re.fullmatch(r"-?\d+(\.\d+)?", final), r


def test_texts_are_short():
    for r in _shipped():
        assert len(r["question"].split()) <= 25, r["question"]
        assert all(len(line.split()) <= 16 for line in _split(r["answer"])[0]), r


def test_arithmetic_reasoning_is_correct_and_ends_in_the_final_answer():
    for kind, r in q.generate_tagged():
        checked = _check_equations(r["answer"])
        if kind == "decimal":
            continue
        assert checked >= 1, r
        lines, final = _split(r["answer"])
        last = _equations(lines[-1])[-1]
        assert math.isclose(_value(last[-1]), float(final)), r


def test_decimal_comparisons_are_right():
    pattern = re.compile(r"Which is (larger|smaller), (\d+\.\d+) or (\d+\.\d+)\?")
    for kind, r in q.generate_tagged():
        if kind != "decimal":
            continue
        m = pattern.fullmatch(r["question"])
        assert m, r
        a, b = m.group(2), m.group(3)
        assert sorted(len(x.split(".")[1]) for x in (a, b)) == [1, 2], r
        want = max(a, b, key=float) if m.group(1) == "larger" else min(a, b, key=float)
        assert _split(r["answer"])[1] == want, r
        assert f"so {want} is {m.group(1)}" in r["answer"], r
        hundredths = re.search(r"(\d+) hundredths is (more|less) than (\d+) hundredths", r["answer"])
        assert hundredths, r
        h1, h2 = int(hundredths.group(1)), int(hundredths.group(3))
        assert round(float(want) % 1 * 100) == h1, r
        assert (h1 > h2) == (hundredths.group(2) == "more") and h1 != h2, r
        assert _check_equations(r["answer"]) == 2, r  # "a = a0 and b = b."


def test_decimal_mix_includes_both_directions():
    one_decimal_wins = two_decimal_wins = 0
    for kind, r in q.generate_tagged():
        if kind == "decimal":
            final = _split(r["answer"])[1]
            longer = len(final.split(".")[1]) == 2
            two_decimal_wins += longer
            one_decimal_wins += not longer
    assert one_decimal_wins >= 10 and two_decimal_wins >= 10


def test_all_kinds_present_in_roughly_equal_shares():
    tagged = q.generate_tagged()
    assert [row for _, row in tagged] == q.generate()
    counts = Counter(kind for kind, _ in tagged)
    assert set(counts) == set(q.KINDS) and len(q.KINDS) == 7
    share = len(tagged) / len(q.KINDS)
    assert all(abs(c - share) <= 1 for c in counts.values()), counts


def test_kinds_recognisable_from_text():
    rows = _shipped()
    texts = [r["question"] + "\n" + r["answer"] for r in rows]
    assert any("Which is larger" in t for t in texts)
    assert any(re.search(r"\n-?\d+ \+ \d+ = ", "\n" + t.split("\n", 1)[1]) for t in texts)
    assert any("temperature drops" in t and "#### -" in t for t in texts)  # below zero
    assert any(" * " in t and "%" not in t for t in texts)
    assert any(" / " in t and "%" not in t for t in texts)
    assert any(len(_split(r["answer"])[0]) == 2 and "hundredths" not in r["answer"] for r in rows)
    assert any(re.search(r"\d+% of \d+", t) for t in texts)


def test_numbers_mostly_small():
    nums = [abs(float(x)) for r in _shipped() for x in re.findall(r"-?\d+(?:\.\d+)?", r["question"])]
    assert sum(n < 100 for n in nums) / len(nums) >= 0.9


@pytest.mark.parametrize("bad, ok", [
    ("7 + 5 = 13\n#### 13", False),
    ("3 * 4 = 12\n12 - 5 = 7\n#### 7", True),
    ("25% of 80 = 80 * 25 / 100 = 21\n#### 21", False),
    ("3 - 8 = -5\n#### -5", True),
    ("9.9 = 9.91 and 9.11 = 9.11.\n#### 9.9", False),
])
def test_equation_checker_can_fail(bad, ok):
    if ok:
        assert _check_equations(bad) >= 1
    else:
        with pytest.raises(AssertionError):
            _check_equations(bad)


def test_system_prompt_and_name():
    assert DEMO_NAME == "edgetune-demo"
    assert "<reasoning>" in SYSTEM_PROMPT and "<answer>" in SYSTEM_PROMPT
    assert "</reasoning>\n<answer>" in SYSTEM_PROMPT
    assert "step by step" in SYSTEM_PROMPT
