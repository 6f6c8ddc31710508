"""Tests for edgetune.training.rewards: the fixed GRPO reward functions."""

from __future__ import annotations

import re

import pytest

from edgetune.training.rewards import (
    ANSWER_FORMATS,
    R1,
    REASONING,
    REWARD_NAMES,
    THINK,
    AnswerFormat,
    answers_match,
    completion_text,
    correctness_reward,
    default_rewards,
    extract_answer,
    number_reward,
    parse_number,
    rewards_by_name,
    score_completion,
    soft_format_reward,
    strict_format_reward,
    xml_count_reward,
)

MULTILINE_REASONING = (
    "Janet has 16 eggs per day.\n"
    "\n"
    "She eats 3 for breakfast and bakes muffins with 4.\n"
    "That leaves 16 - 3 - 4 = 9 eggs.\n"
    "\n"
    "She sells each for $2, so 9 * 2 = 18."
)
GOOD = f"<reasoning>\n{MULTILINE_REASONING}\n</reasoning>\n<answer>\n18\n</answer>"
GOOD_THINK = f"<think>\n{MULTILINE_REASONING}\n</think>\n<answer>\n18\n</answer>"

# The regexes from Unsloth's GRPO notebook, verbatim: no re.DOTALL.
UNSLOTH_STRICT = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
UNSLOTH_SOFT = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"


def call(fn, completions, answers=None):
    """Call a reward exactly as TRL's GRPOTrainer does."""
    n = len(completions)
    answers = answers if answers is not None else ["0"] * n
    return fn(
        prompts=[[{"role": "user", "content": "q"}]] * n,
        completions=completions,
        completion_ids=[[1, 2, 3]] * n,
        answer=answers,
        extra_column=["x"] * n,
    )


# --- AnswerFormat -------------------------------------------------------------


def test_tags():
    assert REASONING.tags() == ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
    assert THINK.tags() == ("<think>", "</think>", "<answer>", "</answer>")
    assert AnswerFormat("r", "a").tags() == ("<r>", "</r>", "<a>", "</a>")


def test_answer_format_is_frozen():
    with pytest.raises(Exception):
        REASONING.reasoning_tag = "think"  # type: ignore[misc]


# --- completion_text ----------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("plain text", "plain text"),
        ([{"role": "assistant", "content": "hello"}], "hello"),
        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "ab"),
        ([{"role": "user", "content": "ignored"}, {"role": "assistant", "content": "kept"}], "kept"),
        ([{"content": "no role"}], "no role"),
        ({"role": "assistant", "content": "single dict"}, "single dict"),
        ([{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}, {"type": "text", "text": "y"}]}], "xy"),
        ([], ""),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


def test_completion_text_rejects_other_types():
    with pytest.raises(TypeError):
        completion_text(42)


# --- extract_answer -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, "18"),
        ("<answer>42</answer>", "42"),
        ("<answer>\n  -7  \n</answer>", "-7"),
        ("<answer>\nline one\n\nline two\n</answer>", "line one\n\nline two"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>1</answer> then <answer>2", "1"),
        ("<answer>1 <answer>2</answer>", "2"),
        ("<answer></answer>", ""),
        ("no tags at all", None),
        ("<answer>unclosed", None),
        ("closed only</answer>", None),
        ("</answer> reversed <answer>", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_custom_tag():
    fmt = AnswerFormat(answer_tag="final")
    assert extract_answer("<final>9</final><answer>1</answer>", fmt) == "9"
    assert extract_answer("<answer>1</answer>", fmt) is None


def test_extract_answer_think_format_same_answer_tag():
    assert extract_answer(GOOD_THINK, THINK) == "18"


# --- parse_number -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42.0),
        ("-5", -5.0),
        ("+3", 3.0),
        ("\u22125", -5.0),
        ("1,000", 1000.0),
        ("-1,234,567.89", -1234567.89),
        ("3.5", 3.5),
        (".5", 0.5),
        ("-.25", -0.25),
        ("$12", 12.0),
        ("$1,200.50", 1200.5),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("\u20ac7", 7.0),
        ("12%", 12.0),
        ("12 %", 12.0),
        ("1/2", 0.5),
        ("-3/4", -0.75),
        ("3 / 4", 0.75),
        ("\\frac{1}{4}", 0.25),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        ("x = 42", 42.0),
        ("42 apples", 42.0),
        ("The answer is 42.", 42.0),
        ("first 3, then 7", 7.0),
        ("1, 2, 3", 3.0),
        ("3-5", 5.0),
        ("x=-5", -5.0),
        ("\\boxed{17}", 17.0),
        ("  9  ", 9.0),
        ("0", 0.0),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["", "no number here", "1,00,0", "1,2,3", "1,0000", "1.2.3", "abc123", "1/0", "1e999", "-", "$", "%", "."],
)
def test_parse_number_none(text):
    assert parse_number(text) is None


def test_unsloth_isdigit_bug_is_fixed():
    for text in ("-5", "1,000", "3.5"):
        assert not text.isdigit()
        assert parse_number(text) is not None


# --- answers_match ------------------------------------------------------------


@pytest.mark.parametrize(
    "predicted, expected",
    [
        ("42", "42"),
        ("42.0", "42"),
        ("1000", "1,000"),
        ("1,000", "1000"),
        ("-5", "-5"),
        ("\u22125", "-5"),
        ("$18", "18"),
        ("18 dollars", "18"),
        ("The answer is 18.", "18"),
        ("0.5", "1/2"),
        ("1/2", "0.5"),
        ("12%", "12"),
        ("12", "12%"),
        ("12.0", "12 %"),
        ("3.50", "$3.5"),
        ("1e3", "1000"),
        ("0.33333", "1/3"),
        ("Paris", "paris"),
        ("  New   York. ", "new york"),
        ('"yes"', "Yes"),
        ("\u201cB\u201d", "b"),
        ("B2", "b2"),
    ],
)
def test_answers_match(predicted, expected):
    assert answers_match(predicted, expected) is True


@pytest.mark.parametrize(
    "predicted, expected",
    [
        (None, "42"),
        (None, "paris"),
        ("41", "42"),
        ("5", "-5"),
        ("100", "1,000"),
        ("", "42"),
        ("no number", "42"),
        ("0.12", "12%"),
        ("0.3", "1/3"),
        ("London", "Paris"),
        ("B3", "B2"),
        ("42", "B2"),
        ("4", "3 apples and 4 oranges"),  # expected is text unless it is one whole number
    ],
)
def test_answers_do_not_match(predicted, expected):
    assert answers_match(predicted, expected) is False


def test_answers_match_tolerances():
    assert answers_match("100.001", "100") is True  # within rel_tol 1e-4
    assert answers_match("100.1", "100") is False
    assert answers_match("100.1", "100", rel_tol=1e-2) is True
    assert answers_match("0.0000001", "0") is True  # within abs_tol 1e-6
    assert answers_match("0.001", "0") is False


# --- TRL calling convention, names ----------------------------------------------


def test_reward_names():
    assert REWARD_NAMES == ("correctness", "number", "strict_format", "soft_format", "xml_count")
    assert [fn.__name__ for fn in default_rewards()] == list(REWARD_NAMES)
    assert [fn.__name__ for fn in default_rewards(THINK)] == list(REWARD_NAMES)


@pytest.mark.parametrize(
    "factory, name",
    [
        (correctness_reward, "correctness"),
        (number_reward, "number"),
        (strict_format_reward, "strict_format"),
        (soft_format_reward, "soft_format"),
        (xml_count_reward, "xml_count"),
    ],
)
def test_factory_names(factory, name):
    assert factory().__name__ == name


@pytest.mark.parametrize("n", [1, 3, 8])
def test_output_length_matches_completions(n):
    completions = [GOOD] * n
    for fn in default_rewards():
        scores = call(fn, completions, ["18"] * n)
        assert len(scores) == n
        assert all(isinstance(s, float) for s in scores)


def test_default_rewards_full_scores_on_good_completion():
    scores = [call(fn, [GOOD], ["18"])[0] for fn in default_rewards()]
    assert scores == [2.0, 0.5, 0.5, 0.5, 0.5]


def test_default_rewards_think_variant():
    scores = [call(fn, [GOOD_THINK], ["18"])[0] for fn in default_rewards(THINK)]
    assert scores == [2.0, 0.5, 0.5, 0.5, 0.5]
    # The <reasoning> rewards do not accept <think> formatting (answers still extract).
    scores = [call(fn, [GOOD_THINK], ["18"])[0] for fn in default_rewards(REASONING)]
    assert scores == [2.0, 0.5, 0.0, 0.0, 0.25]


def test_conversational_completions():
    completions = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "no idea"}]]
    assert call(correctness_reward(), completions, ["18", "18"]) == [2.0, 0.0]
    assert call(strict_format_reward(), completions) == [0.5, 0.0]
    assert call(soft_format_reward(), completions) == [0.5, 0.0]
    assert call(number_reward(), completions) == [0.5, 0.0]
    assert call(xml_count_reward(), completions) == [0.5, 0.0]


def test_positional_style_keywords_accept_trainer_state():
    fn = correctness_reward()
    assert fn(prompts=["q"], completions=[GOOD], answer=["18"], trainer_state=object()) == [2.0]


# --- correctness ----------------------------------------------------------------


def answer_block(value: str) -> str:
    return f"<reasoning>\nwork\nmore work\n</reasoning>\n<answer>\n{value}\n</answer>"


@pytest.mark.parametrize(
    "predicted, expected",
    [
        ("-5", "-5"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("3.5", "3.5"),
        ("12%", "12"),
        ("1/2", "0.5"),
        ("$12", "12"),
        ("$1,250.00", "1250"),
        ("The total is 18 eggs.", "18"),
        ("Paris", "paris"),
    ],
)
def test_correctness_right_answers(predicted, expected):
    assert call(correctness_reward(), [answer_block(predicted)], [expected]) == [2.0]


@pytest.mark.parametrize(
    "predicted, expected",
    [("-5", "5"), ("1,001", "1000"), ("3.4", "3.5"), ("2/3", "0.5"), ("Rome", "Paris"), ("", "18")],
)
def test_correctness_wrong_answers_score_zero(predicted, expected):
    assert call(correctness_reward(), [answer_block(predicted)], [expected]) == [0.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<reasoning>\n18\n</reasoning>",
        "<reasoning>\nwork\n</reasoning>\n<answer>\n18",
        "18",
        "<answer>18<answer>",
    ],
)
def test_correctness_missing_or_unclosed_answer_scores_zero(completion):
    assert call(correctness_reward(), [completion], ["18"]) == [0.0]


def test_correctness_last_answer_wins():
    text = "<answer>\n17\n</answer>\nwait, recheck\n<answer>\n18\n</answer>"
    assert call(correctness_reward(), [text, text], ["18", "17"]) == [2.0, 0.0]


def test_correctness_mixed_batch_and_weight():
    completions = [answer_block("18"), answer_block("19"), answer_block("-3")]
    assert call(correctness_reward(weight=1.0), completions, ["18", "18", "-3"]) == [1.0, 0.0, 1.0]


def test_correctness_non_string_answers():
    assert call(correctness_reward(), [answer_block("7"), answer_block("2.5")], [7, 2.5]) == [2.0, 2.0]


def test_correctness_requires_answer_column():
    with pytest.raises(ValueError, match="answer"):
        correctness_reward()(prompts=["q"], completions=[GOOD])


def test_correctness_length_mismatch():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        correctness_reward()(prompts=["q", "q"], completions=[GOOD, GOOD], answer=["18"])


# --- number -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("18", 0.5),
        ("-5", 0.5),
        ("1,000", 0.5),
        ("3.5", 0.5),
        ("12%", 0.5),
        ("1/2", 0.5),
        ("$12", 0.5),
        ("about 42 apples", 0.5),
        ("Paris", 0.0),
        ("", 0.0),
    ],
)
def test_number_reward(value, expected):
    assert call(number_reward(), [answer_block(value)]) == [expected]


def test_number_reward_no_answer_and_weight():
    assert call(number_reward(), ["just 42"]) == [0.0]
    assert call(number_reward(weight=1.5), [answer_block("-5")]) == [1.5]


# --- strict / soft format -----------------------------------------------------------


def test_buggy_unsloth_regexes_fail_on_multiline_reasoning():
    # Documents the bug we fix: without DOTALL, "." stops at newlines.
    assert re.match(UNSLOTH_STRICT, GOOD + "\n") is None
    assert re.match(UNSLOTH_SOFT, GOOD) is None
    assert call(strict_format_reward(), [GOOD]) == [0.5]
    assert call(soft_format_reward(), [GOOD]) == [0.5]


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        GOOD + "\n",
        "\n  " + GOOD + "\n\n",
        "<reasoning>\nOne line.\n</reasoning>\n<answer>\n5\n</answer>",
        "<reasoning>\n\n\npara 1\n\npara 2\n\n</reasoning>\n<answer>\nmulti\nline\n</answer>",
        "<reasoning>\n\n</reasoning>\n<answer>\n\n</answer>",
    ],
)
def test_strict_format_accepts(text):
    assert call(strict_format_reward(), [text]) == [0.5]


@pytest.mark.parametrize(
    "text",
    [
        "Sure! " + GOOD,
        "Let me think.\n" + GOOD,
        GOOD + "\nHope that helps",
        GOOD.replace("<reasoning>\n", "<reasoning>"),
        GOOD.replace("\n</reasoning>", "</reasoning>"),
        GOOD.replace("</reasoning>\n<answer>", "</reasoning>\n\n<answer>"),
        GOOD.replace("\n</answer>", "</answer>"),
        GOOD + "\n<answer>\n19\n</answer>",
        "<answer>\n18\n</answer>",
        "<reasoning>\nwork\n</reasoning>",
        GOOD_THINK,
    ],
)
def test_strict_format_rejects(text):
    assert call(strict_format_reward(), [text]) == [0.0]


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "<reasoning>inline</reasoning><answer>5</answer>",
        "Preamble\n<reasoning>\na\n\nb</reasoning>   \n\n  <answer>x\ny</answer> trailing",
        GOOD.replace("\n</answer>", "</answer>"),
    ],
)
def test_soft_format_accepts(text):
    assert call(soft_format_reward(), [text]) == [0.5]


@pytest.mark.parametrize(
    "text",
    [
        "<answer>5</answer><reasoning>r</reasoning>",
        "<reasoning>r</reasoning> text in between <answer>5</answer>",
        "<reasoning>r</reasoning><answer>5",
        "<reasoning>r<answer>5</answer>",
        "plain",
        GOOD_THINK,
    ],
)
def test_soft_format_rejects(text):
    assert call(soft_format_reward(), [text]) == [0.0]


def test_format_rewards_think_variant():
    assert call(strict_format_reward(THINK), [GOOD_THINK, GOOD]) == [0.5, 0.0]
    assert call(soft_format_reward(THINK), [GOOD_THINK, GOOD]) == [0.5, 0.0]


def test_format_weights():
    assert call(strict_format_reward(weight=2.0), [GOOD]) == [2.0]
    assert call(soft_format_reward(weight=0.1), [GOOD]) == [0.1]


# --- xml_count ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, 0.5),
        ("<reasoning>x</reasoning><answer>y</answer>", 0.5),
        ("<reasoning>\nonly reasoning\n</reasoning>", 0.25),
        ("<answer>\n5\n</answer>", 0.25),
        ("<answer>\n5", 0.125),
        ("nothing", 0.0),
        ("<reasoning>a</reasoning><reasoning>b</reasoning><answer>c</answer>", 0.25),
        (GOOD + "\n\n   \n", 0.5),
        (GOOD + "\nabc", 0.5 - 0.003),
        (GOOD + "\nab cd\nef", 0.5 - 0.006),
    ],
)
def test_xml_count(text, expected):
    assert call(xml_count_reward(), [text]) == [pytest.approx(expected)]


def test_xml_count_penalty_counts_after_last_closing_answer():
    text = "<answer>1</answer>xy<answer>2</answer>z"
    # <answer> and </answer> appear twice: no credit; tail after the last </answer> is "z".
    assert call(xml_count_reward(), [text]) == [pytest.approx(-0.001)]


def test_xml_count_can_go_negative():
    text = GOOD + "x" * 1000
    assert call(xml_count_reward(), [text]) == [pytest.approx(0.5 - 1.0)]


def test_xml_count_custom_weights_and_think():
    assert call(xml_count_reward(THINK, per_tag=1.0, trailing_penalty=0.1), [GOOD_THINK + "ab"]) == [
        pytest.approx(4.0 - 0.2)
    ]
    assert call(xml_count_reward(THINK), [GOOD]) == [pytest.approx(0.25)]


# --- selection by name --------------------------------------------------------------------


def test_rewards_by_name_order_and_subset():
    fns = rewards_by_name(["xml_count", "correctness"])
    assert [fn.__name__ for fn in fns] == ["xml_count", "correctness"]
    assert [fn.__name__ for fn in rewards_by_name(REWARD_NAMES)] == list(REWARD_NAMES)
    assert rewards_by_name([]) == []


def test_rewards_by_name_single_string():
    assert [fn.__name__ for fn in rewards_by_name("soft_format")] == ["soft_format"]


def test_rewards_by_name_uses_format():
    (fn,) = rewards_by_name(["strict_format"], THINK)
    assert call(fn, [GOOD_THINK, GOOD]) == [0.5, 0.0]


@pytest.mark.parametrize("bad", ["int", "Correctness", "", "format"])
def test_rewards_by_name_unknown(bad):
    with pytest.raises(ValueError, match=re.escape(f"unknown reward {bad!r}; choose from correctness, number")):
        rewards_by_name(["correctness", bad])


# --- score_completion ------------------------------------------------------------------------


def test_score_completion_good():
    assert score_completion(GOOD, "18") == {
        "correctness": 2.0,
        "number": 0.5,
        "strict_format": 0.5,
        "soft_format": 0.5,
        "xml_count": 0.5,
        "correct": 1.0,
    }


def test_score_completion_wrong_and_unformatted():
    scores = score_completion("I think it is 18", "18")
    assert list(scores) == [*REWARD_NAMES, "correct"]
    assert scores == {name: 0.0 for name in [*REWARD_NAMES, "correct"]}


def test_score_completion_wrong_answer_good_format():
    scores = score_completion(answer_block("19"), "18")
    assert scores["correct"] == 0.0
    assert scores["correctness"] == 0.0
    assert scores["strict_format"] == 0.5
    assert scores["number"] == 0.5


def test_score_completion_think():
    assert score_completion(GOOD_THINK, "18", THINK)["strict_format"] == 0.5
    assert score_completion(GOOD_THINK, "18", THINK)["correct"] == 1.0


# --- R1: <think>\n...\n</think>\nANSWER, no answer tags -------------------------------------

GOOD_R1 = f"<think>\n{MULTILINE_REASONING}\n</think>\n18"


def test_r1_tags_and_formats():
    assert R1.tags() == ("<think>", "</think>")
    assert (R1.reasoning_tag, R1.answer_tag) == ("think", None)
    assert ANSWER_FORMATS == {"reasoning": REASONING, "think": THINK, "r1": R1}
    assert list(ANSWER_FORMATS) == ["reasoning", "think", "r1"]


def test_describe_each_format():
    assert REASONING.describe() == "<reasoning>...</reasoning> then <answer>...</answer>"
    assert THINK.describe() == "<think>...</think> then <answer>...</answer>"
    assert R1.describe() == "<think>...</think> then the answer"


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD_R1, "18"),
        ("<think>\nx\n</think>\n  The answer is 9.9.  \n", "The answer is 9.9."),
        ("<think>\nx\n</think>\nline one\nline two", "line one\nline two"),
        # the last </think> wins: a second thought block replaces the first answer
        ("<think>\na\n</think>\n1\n<think>\nb\n</think>\n2", "2"),
        ("no opening tag </think> 42", "42"),
        ("<think>\nx\n</think>\n", None),  # nothing after </think>
        ("<think>\nx\n</think>\n \n\t", None),  # only whitespace after it
        ("<think>\nx\n</think>\n42</think>", None),  # nothing after the LAST one
        ("<think>\nstill thinking, 42", None),  # no </think>: cut off mid-thought
        ("42", None),
        ("", None),
    ],
)
def test_extract_answer_r1(text, expected):
    assert extract_answer(text, R1) == expected


def test_extract_answer_r1_ignores_answer_tags_elsewhere():
    # REASONING's answer block means nothing to R1; only what follows </think> counts
    assert extract_answer("<answer>\n7\n</answer>", R1) is None
    assert extract_answer("<think>\nx\n</think>\n8", REASONING) is None


def test_correctness_r1_number_in_a_sentence():
    completions = [
        "<think>\n9.9 = 9.90 and 9.90 > 9.11\n</think>\nThe answer is 9.9.",
        "<think>\n11 > 9 so 9.11 is larger\n</think>\nThe answer is 9.11.",
        "<think>\nThe answer is 9.9.\n</think>\n",  # right number, but only in the thought
        "The answer is 9.9.",  # no think block at all
    ]
    assert call(correctness_reward(R1), completions, ["9.9"] * 4) == [2.0, 0.0, 0.0, 0.0]
    assert call(number_reward(R1), completions) == [0.5, 0.5, 0.0, 0.0]


def test_correctness_r1_text_answer():
    completions = ["<think>\nthe capital\n</think>\nParis.", "<think>\nhmm\n</think>\nLyon"]
    assert call(correctness_reward(R1), completions, ["paris", "paris"]) == [2.0, 0.0]


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nx\n</think>\n42",
        GOOD_R1,
        "\n  <think>\nx\n</think>\n42\n\n",  # surrounding whitespace is stripped first
        "<think>\nx\n</think>\nThe answer\nspans two lines.",
        "<think>\n\n</think>\n42",  # an empty thought, as SFT data with no CoT gives
    ],
)
def test_strict_format_r1_accepts(text):
    assert call(strict_format_reward(R1), [text]) == [0.5]


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nx\n</think>\n",  # no answer
        "<think>\nx\n</think>\n   ",  # only whitespace after </think>
        "<think>\nx\n</think>\n\n42",  # answer not on the line right after </think>
        "<think>\nx\n</think>42",  # answer glued to the tag
        "<think>x</think>\n42",  # tags not on their own lines
        "Sure! <think>\nx\n</think>\n42",  # text before <think>
        "<think>\nx\n</think>\n42\n<think>\ny\n</think>\n43",  # a second think block
        "<think>\nx <think> y\n</think>\n42",  # an extra opening tag
        "<think>\nx\n</think>\n42 </think>",  # an extra closing tag
        "42",
        GOOD,  # REASONING's layout is not R1's
    ],
)
def test_strict_format_r1_rejects(text):
    assert call(strict_format_reward(R1), [text]) == [0.0]


def test_soft_format_r1():
    completions = [
        "<think>\nx\n</think>\n42",
        "<think>x</think>42",  # no newlines needed
        "Sure! <think>x</think>  the answer is 42 and more",  # anywhere in the text
        "<think>\nx\n</think>\n  \n",  # nothing after the thought
        "</think> 42",  # no opening tag
        "<think> 42",  # no closing tag
        "42",
    ]
    assert call(soft_format_reward(R1), completions) == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_xml_count_r1():
    completions = [
        "<think>\nx\n</think>\n42",  # both tags once
        "<think>\nx\n</think>\n" + "a long answer " * 20,  # no penalty for the answer text
        "<think>\nx, still thinking",  # only <think>
        "x\n</think>\n42",  # only </think>
        "<think>\n<think>\nx\n</think>\n42",  # <think> twice: only </think> counts
        "<answer>\n42\n</answer>",  # no think tags at all
    ]
    assert call(xml_count_reward(R1), completions) == [0.5, 0.5, 0.25, 0.25, 0.25, 0.0]


def test_score_completion_r1():
    text = "<think>\nI compare 9.9 and 9.11: 9.90 > 9.11\n</think>\nThe answer is 9.9."
    assert score_completion(text, "9.9", R1) == {
        "correctness": 2.0,
        "number": 0.5,
        "strict_format": 0.5,
        "soft_format": 0.5,
        "xml_count": 0.5,
        "correct": 1.0,
    }
    assert score_completion(GOOD_R1, "19", R1) == {
        "correctness": 0.0,
        "number": 0.5,
        "strict_format": 0.5,
        "soft_format": 0.5,
        "xml_count": 0.5,
        "correct": 0.0,
    }
    # the REASONING layout under R1: the think-less completion scores nothing
    assert score_completion(GOOD, "18", R1) == {name: 0.0 for name in [*REWARD_NAMES, "correct"]}


def test_rewards_by_name_r1():
    fns = rewards_by_name(["strict_format", "correctness"], R1)
    assert [call(fn, [GOOD_R1, GOOD], ["18", "18"]) for fn in fns] == [[0.5, 0.0], [2.0, 0.0]]
