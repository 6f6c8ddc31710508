"""Generate the demo dataset: short GSM8K-style reasoning questions with numeric answers.

Deterministic for a given seed. Texts are deliberately short and reuse a small
vocabulary (a few names and objects) because the demo model is tiny. Seven kinds,
in roughly equal shares, interleaved: decimal comparison (the famous
"9.9 or 9.11" first), addition, subtraction (temperatures may go below zero),
multiplication, division with whole results, two-step problems and whole-number
percentages. Each answer is one to three reasoning lines, then ``#### <number>``.

Run ``python -m edgetune.demo.questions`` to rewrite ``data/questions.jsonl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

KINDS: tuple[str, ...] = (
    "decimal", "addition", "subtraction", "multiplication", "division", "two_step", "percent",
)

NAMES = ("Sam", "Mia", "Tom", "Ana")
OBJECTS = ("apples", "pens", "cookies", "pencils", "books", "eggs", "cards")
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"))
PERCENTS = (5, 10, 20, 25, 30, 40, 50, 60, 75, 80, 90)

FAMOUS = {
    "question": "Which is larger, 9.9 or 9.11?",
    "answer": "9.9 = 9.90 and 9.11 = 9.11.\n"
              "90 hundredths is more than 11 hundredths, so 9.9 is larger.\n#### 9.9",
}

Row = dict[str, str]


def _fmt(value: float | int) -> str:
    """A number without a trailing ``.0``: 20, -5, 9.9."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _row(question: str, lines: list[str], final: float | int | str) -> Row:
    final_text = final if isinstance(final, str) else _fmt(final)
    return {"question": question, "answer": "\n".join(lines) + "\n#### " + final_text}


def _decimal(rng: random.Random) -> Row:
    whole = rng.randint(0, 12)
    tenth = rng.randint(1, 9)
    if rng.random() < 0.65:   # the one-decimal number is larger (the classic trap)
        hundredths = rng.choice([h for h in range(1, tenth * 10) if h % 10])
    else:                     # the two-decimal number is larger
        hundredths = rng.choice([h for h in range(tenth * 10 + 1, 100) if h % 10])
    one = f"{whole}.{tenth}"
    two = f"{whole}.{hundredths:02d}"
    one_h, two_h = tenth * 10, hundredths
    first, second = (one, two) if rng.random() < 0.5 else (two, one)
    padded = {one: f"{whole}.{tenth}0", two: two}
    line1 = f"{first} = {padded[first]} and {second} = {padded[second]}."
    ask_larger = rng.random() < 0.75
    one_bigger = one_h > two_h
    if ask_larger:
        ans, ans_h, other_h = (one, one_h, two_h) if one_bigger else (two, two_h, one_h)
        line2 = f"{ans_h} hundredths is more than {other_h} hundredths, so {ans} is larger."
        question = f"Which is larger, {first} or {second}?"
    else:
        ans, ans_h, other_h = (two, two_h, one_h) if one_bigger else (one, one_h, two_h)
        line2 = f"{ans_h} hundredths is less than {other_h} hundredths, so {ans} is smaller."
        question = f"Which is smaller, {first} or {second}?"
    return _row(question, [line1, line2], ans)


def _addition(rng: random.Random) -> Row:
    name, other = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    style = rng.randrange(3)
    if style == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        q = f"{name} has {a} {obj} and buys {b} more. How many {obj} does {name} have now?"
    elif style == 1:
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        q = f"{name} has {a} {obj} and {other} has {b} {obj}. How many {obj} do they have in total?"
    else:
        a, b = rng.randint(-10, 20), rng.randint(2, 15)
        q = f"It is {a} degrees and the temperature rises by {b} degrees. What is the temperature now?"
    return _row(q, [f"{a} + {b} = {a + b}"], a + b)


def _subtraction(rng: random.Random) -> Row:
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    if rng.random() < 0.5:
        a = rng.randint(0, 15)
        b = rng.randint(a + 1, a + 12) if rng.random() < 0.7 else rng.randint(1, max(1, a))
        if rng.random() < 0.2:
            a = -a if a else -1
        q = f"It is {a} degrees and the temperature drops by {b} degrees. What is the temperature now?"
    else:
        a = rng.randint(5, 60)
        b = rng.randint(1, a - 1)
        q = f"{name} has {a} {obj} and gives away {b}. How many {obj} are left?"
    return _row(q, [f"{a} - {b} = {a - b}"], a - b)


def _multiplication(rng: random.Random) -> Row:
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    one, many = rng.choice(CONTAINERS)
    per, count = rng.randint(2, 12), rng.randint(2, 9)
    if rng.random() < 0.5:
        q = f"A {one} holds {per} {obj}. How many {obj} are in {count} {many}?"
    else:
        q = f"{name} has {count} {many} with {per} {obj} in each. How many {obj} does {name} have?"
    return _row(q, [f"{per} * {count} = {per * count}"], per * count)


def _division(rng: random.Random) -> Row:
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    one, many = rng.choice(CONTAINERS)
    parts, each = rng.randint(2, 10), rng.randint(2, 12)
    total = parts * each
    if rng.random() < 0.5:
        q = f"{total} {obj} are shared equally by {parts} friends. How many {obj} does each friend get?"
    else:
        q = f"{name} puts {total} {obj} equally into {parts} {many}. How many {obj} are in each {one}?"
    return _row(q, [f"{total} / {parts} = {each}"], each)


def _two_step(rng: random.Random) -> Row:
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    one, many = rng.choice(CONTAINERS)
    if rng.random() < 0.5:
        count, per = rng.randint(2, 6), rng.randint(2, 10)
        total = count * per
        give = rng.randint(1, total - 1)
        q = f"{name} buys {count} {many} of {per} {obj} and gives away {give}. How many {obj} are left?"
        lines = [f"{count} * {per} = {total}", f"{total} - {give} = {total - give}"]
        return _row(q, lines, total - give)
    a, b = rng.randint(3, 30), rng.randint(2, 20)
    total = a + b
    give = rng.randint(1, total - 1)
    q = f"{name} has {a} {obj}, buys {b} more and gives away {give}. How many {obj} are left?"
    lines = [f"{a} + {b} = {total}", f"{total} - {give} = {total - give}"]
    return _row(q, lines, total - give)


def _percent(rng: random.Random) -> Row:
    p = rng.choice(PERCENTS)
    step = 100 // _gcd(p, 100)        # smallest x with a whole p% of x
    x = step * rng.randint(1, max(1, 120 // step))
    result = x * p // 100
    if rng.random() < 0.6:
        q = f"What is {p}% of {x}?"
    else:
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        q = f"{name} has {x} {obj} and gives away {p}% of them. How many {obj} does {name} give away?"
    return _row(q, [f"{p}% of {x} = {x} * {p} / 100 = {result}"], result)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


_MAKERS: dict[str, Callable[[random.Random], Row]] = {
    "decimal": _decimal, "addition": _addition, "subtraction": _subtraction,
    "multiplication": _multiplication, "division": _division, "two_step": _two_step,
    "percent": _percent,
}


def generate_tagged(seed: int = 7, n: int = 360) -> list[tuple[str, Row]]:
    """Like :func:`generate`, each row paired with its kind (one of ``KINDS``)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, Row]] = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if i == 0:
            row = dict(FAMOUS)
        else:
            for _ in range(10_000):
                row = _MAKERS[kind](rng)
                if row["question"] not in seen and "9.11" not in row["question"]:
                    break
            else:  # pragma: no cover - the question spaces are far larger than n
                raise RuntimeError(f"could not find a new {kind} question")
        seen.add(row["question"])
        out.append((kind, row))
    return out


def generate(seed: int = 7, n: int = 360) -> list[Row]:
    """``n`` unique ``{"question", "answer"}`` rows, deterministic for ``seed``; the
    first is "Which is larger, 9.9 or 9.11?"."""
    return [row for _, row in generate_tagged(seed, n)]


def main() -> None:
    path = Path(__file__).parent / "data" / "questions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = generate()
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} questions to {path}")


if __name__ == "__main__":
    main()
