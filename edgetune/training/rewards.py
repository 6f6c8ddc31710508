"""Reward functions for GRPO training, compatible with TRL's ``GRPOTrainer``.

Hand-written because no maintained library ships correct GRPO format/correctness
rewards. The ones most people copy come from Unsloth's GRPO notebook and have
known bugs (unsloth issue #1761): the format regexes lack ``re.DOTALL``, so any
multi-line reasoning scores 0, and the "int" reward uses ``str.isdigit()``, so
"-5", "1,000" and "3.5" are not numbers. These fix both and keep the notebook's
five rewards and default weights. The model answers as
``<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>`` (or, DeepSeek-R1
style, with ``<think>``). TRL calls each reward as
``fn(prompts=..., completions=..., **dataset_columns)``, the expected answer
arriving as the ``answer`` column, and logs ``rewards/<__name__>/mean``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

RewardFn = Callable[..., list[float]]


@dataclass(frozen=True)
class AnswerFormat:
    """The tag names a completion is expected to use.

    ``answer_tag=None`` is DeepSeek-R1's layout: ``<think>...</think>`` and then the answer as
    plain text (what SFT on Question/Complex_CoT/Response data teaches).
    """

    reasoning_tag: str = "reasoning"
    answer_tag: str | None = "answer"

    def tags(self) -> tuple[str, ...]:
        """``(<reasoning>, </reasoning>, <answer>, </answer>)``; only the first two for R1."""
        r, a = self.reasoning_tag, self.answer_tag
        if a is None:
            return f"<{r}>", f"</{r}>"
        return f"<{r}>", f"</{r}>", f"<{a}>", f"</{a}>"

    def describe(self) -> str:
        ro, rc, *answer = self.tags()
        return f"{ro}...{rc} then " + ("{}...{}".format(*answer) if answer else "the answer")


REASONING = AnswerFormat()
THINK = AnswerFormat(reasoning_tag="think")
R1 = AnswerFormat(reasoning_tag="think", answer_tag=None)
ANSWER_FORMATS = {"reasoning": REASONING, "think": THINK, "r1": R1}


def completion_text(completion: Any) -> str:
    """The text of one completion: a ``str``, or the concatenated assistant (or
    role-less) contents of a message list; list contents give their text parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        raise TypeError(f"completion must be a str or a list of messages, not {type(completion).__name__}")
    parts: list[str] = []
    for message in completion:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "".join(parts)


def extract_answer(text: str, fmt: AnswerFormat = REASONING) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` pair, stripped; ``None`` if none.

    The last closing tag pairs with the nearest opening tag before it:
    "<answer>1</answer> <answer>2" gives "1", "<answer>1 <answer>2</answer>" "2".
    """
    if fmt.answer_tag is None:  # R1: everything after the last </think>
        close = fmt.tags()[1]
        end = text.rfind(close)
        answer = text[end + len(close):].strip() if end != -1 else ""
        return answer or None
    _, _, open_tag, close_tag = fmt.tags()
    end = text.rfind(close_tag)
    start = text.rfind(open_tag, 0, end) if end != -1 else -1
    return None if start == -1 else text[start + len(open_tag):end].strip()


# One number: comma thousands only in groups of three ("1,000", never "1,00");
# a decimal part, ".5", an exponent. Not preceded by a letter, digit, "." or
# "digit,"; not followed by a digit or by ",digit"/".digit", so "1,00,0" and
# "1,2,3" contain no number at all while "1, 2, 3" has three.
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?<!\d,)"
    rf"(?P<sign>[+-]?)[$€£¥]?(?P<sign2>[+-]?)(?P<num>{_UNSIGNED})"
    rf"(?:\s*/\s*(?P<den>{_UNSIGNED}))?"
    r"(?!\d|[.,]\d)\s*%?"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def _number_value(match: re.Match[str]) -> float | None:
    value = float(match["num"].replace(",", ""))
    if match["den"] is not None:
        den = float(match["den"].replace(",", ""))
        if den == 0:
            return None
        value /= den
    if (match["sign"] + match["sign2"]).count("-") % 2:
        value = -value
    return value if math.isfinite(value) else None


def _normalise_numeric(text: str) -> str:
    return _LATEX_FRAC_RE.sub(r"\1/\2", text.replace("\u2212", "-")).strip()


def parse_number(text: str) -> float | None:
    """A single numeric value from an answer string, or ``None``.

    Handles "-5", "+3", unicode minus "−5", comma thousands "1,000" (only
    groups of three: "1,00,0" is no number; "1 000" is two numbers), "3.5",
    ".5", "1e3", currency "$12", "-$5", percent "12%" (-> 12.0, not 0.12),
    fractions "1/2" and ``\\frac{1}{2}`` (-> 0.5). In text such as "x = 42" or
    "42 apples" the LAST number wins ("3-5" gives 5: a "-" right after a word
    character is not a sign). Division by zero and overflow give ``None``.
    """
    matches = list(_NUMBER_RE.finditer(_normalise_numeric(text)))
    return _number_value(matches[-1]) if matches else None


def _parse_whole_number(text: str) -> float | None:
    """Like :func:`parse_number`, but only when the whole string is one number."""
    match = _NUMBER_RE.fullmatch(_normalise_numeric(text).rstrip("."))
    return _number_value(match) if match else None


_QUOTES = ("\"\"", "''", "``", "\u201c\u201d", "\u2018\u2019")


def _normalise_text(text: str) -> str:
    text = " ".join(text.casefold().split())
    while True:
        before = text
        text = text.rstrip(".").strip()
        if len(text) >= 2 and any(text[0] == q[0] and text[-1] == q[1] for q in _QUOTES):
            text = text[1:-1].strip()
        if text == before:
            return text


def answers_match(predicted: str | None, expected: str, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """Whether a predicted answer matches the expected one; ``None`` never matches.

    When the whole ``expected`` string is one number ("42", "-1,000", "$3.50",
    "1/2"), the last number in ``predicted`` is compared with ``math.isclose``.
    Otherwise (also for expected strings merely containing a number, like "B2")
    both are compared as text: casefolded, whitespace collapsed, trailing "."
    and surrounding quotes removed.
    """
    if predicted is None:
        return False
    target = _parse_whole_number(expected)
    if target is not None:
        got = parse_number(predicted)
        return got is not None and math.isclose(got, target, rel_tol=rel_tol, abs_tol=abs_tol)
    return _normalise_text(predicted) == _normalise_text(expected)


def _named(name: str, fn: RewardFn) -> RewardFn:
    fn.__name__ = fn.__qualname__ = name
    return fn


def _texts(completions: Any) -> list[str]:
    if completions is None:
        raise ValueError("reward functions need completions=[...]")
    return [completion_text(c) for c in completions]


def correctness_reward(fmt: AnswerFormat = REASONING, weight: float = 2.0) -> RewardFn:
    """``weight`` for each completion whose extracted answer matches ``answer``."""
    def reward(prompts: Any = None, completions: Any = None, answer: Any = None, **_: Any) -> list[float]:
        texts = _texts(completions)
        if answer is None:
            raise ValueError("the correctness reward needs the dataset's 'answer' column")
        if len(answer) != len(texts):
            raise ValueError(f"got {len(texts)} completions but {len(answer)} answers")
        return [weight if answers_match(extract_answer(t, fmt), str(a)) else 0.0 for t, a in zip(texts, answer)]

    return _named("correctness", reward)


def number_reward(fmt: AnswerFormat = REASONING, weight: float = 0.5) -> RewardFn:
    """``weight`` when the extracted answer contains a number (the fixed "int" reward)."""
    def reward(prompts: Any = None, completions: Any = None, **_: Any) -> list[float]:
        answers = (extract_answer(t, fmt) for t in _texts(completions))
        return [weight if a is not None and parse_number(a) is not None else 0.0 for a in answers]

    return _named("number", reward)


def strict_format_reward(fmt: AnswerFormat = REASONING, weight: float = 0.5) -> RewardFn:
    """``weight`` when the stripped completion is exactly the requested layout:
    one reasoning then one answer block, tags on their own lines, bodies of any
    number of lines, nothing before or after."""
    tags = [re.escape(t) for t in fmt.tags()]
    body = rf"(?:(?!{'|'.join(tags)}).)*"  # any text, newlines included, without the tags
    if fmt.answer_tag is None:  # R1: <think>\n...\n</think>\nanswer (non-empty)
        pattern = re.compile(rf"{tags[0]}\n{body}\n{tags[1]}\n(?=\S){body}", re.DOTALL)
    else:
        ro, rc, ao, ac = tags
        pattern = re.compile(rf"{ro}\n{body}\n{rc}\n{ao}\n{body}\n{ac}", re.DOTALL)

    def reward(prompts: Any = None, completions: Any = None, **_: Any) -> list[float]:
        return [weight if pattern.fullmatch(t.strip()) else 0.0 for t in _texts(completions)]

    return _named("strict_format", reward)


def soft_format_reward(fmt: AnswerFormat = REASONING, weight: float = 0.5) -> RewardFn:
    """``weight`` when a reasoning block is followed (whitespace allowed) by an answer block, anywhere."""
    if fmt.answer_tag is None:  # R1: a think block followed by some answer text
        ro, rc = (re.escape(t) for t in fmt.tags())
        pattern = re.compile(rf"{ro}.*?{rc}\s*\S", re.DOTALL)
    else:
        ro, rc, ao, ac = (re.escape(t) for t in fmt.tags())
        pattern = re.compile(rf"{ro}.*?{rc}\s*{ao}.*?{ac}", re.DOTALL)

    def reward(prompts: Any = None, completions: Any = None, **_: Any) -> list[float]:
        return [weight if pattern.search(t) else 0.0 for t in _texts(completions)]

    return _named("soft_format", reward)


def xml_count_reward(fmt: AnswerFormat = REASONING, per_tag: float = 0.125, trailing_penalty: float = 0.001) -> RewardFn:
    """``per_tag`` for each of the four tags appearing exactly once, minus
    ``trailing_penalty`` per non-whitespace character after the last closing
    answer tag. As in Unsloth's version it is not clamped: it can go below 0."""
    tags = fmt.tags()

    def score(text: str) -> float:
        if fmt.answer_tag is None:  # R1: two tags worth the same in total; the answer follows them
            return sum(2 * per_tag for tag in tags if text.count(tag) == 1)
        total = sum(per_tag for tag in tags if text.count(tag) == 1)
        end = text.rfind(tags[3])
        tail = text[end + len(tags[3]):] if end != -1 else ""
        return total - trailing_penalty * sum(not ch.isspace() for ch in tail)

    def reward(prompts: Any = None, completions: Any = None, **_: Any) -> list[float]:
        return [score(t) for t in _texts(completions)]

    return _named("xml_count", reward)


REWARD_NAMES: tuple[str, ...] = ("correctness", "number", "strict_format", "soft_format", "xml_count")
_FACTORIES: dict[str, Callable[[AnswerFormat], RewardFn]] = dict(
    zip(REWARD_NAMES, (correctness_reward, number_reward, strict_format_reward, soft_format_reward, xml_count_reward))
)


def default_rewards(fmt: AnswerFormat = REASONING) -> list[RewardFn]:
    """All five rewards with their default weights, in ``REWARD_NAMES`` order."""
    return [_FACTORIES[name](fmt) for name in REWARD_NAMES]


def rewards_by_name(names: Iterable[str], fmt: AnswerFormat = REASONING) -> list[RewardFn]:
    """The named rewards, in the order given; a single ``str`` counts as one name."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in _FACTORIES:
            raise ValueError(f"unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)}")
    return [_FACTORIES[name](fmt) for name in names]


def score_completion(text: str, expected: str, fmt: AnswerFormat = REASONING) -> dict[str, float]:
    """Every default reward's score for one completion, plus ``correct`` (1.0 or 0.0)."""
    scores = {fn.__name__: fn(prompts=[""], completions=[text], answer=[expected])[0] for fn in default_rewards(fmt)}
    scores["correct"] = 1.0 if answers_match(extract_answer(text, fmt), expected) else 0.0
    return scores
