"""Task accuracy in llama.cpp, checked against the same model answering through transformers."""

from __future__ import annotations

import dataclasses

import pytest

from edgetune.accuracy import Accuracy, answer_budget, paired_drop, task_accuracy
from edgetune.conversations import formatted_answer, prompt_messages
from edgetune.artifacts import GgufModel
from edgetune.data import load_qa, split_qa
from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
from edgetune.intervals import paired_difference, wilson
from edgetune.llamacpp import open_gguf
from edgetune.training.rewards import REASONING, answers_match, extract_answer

MAX_TOKENS = 64


@pytest.fixture(scope="module")
def held_out():
    return split_qa(load_qa(DEMO_DATA).rows).eval


@pytest.fixture(scope="module")
def f16_accuracy(demo_build, held_out):
    out, _, _ = demo_build
    gguf = GgufModel.load(out / "gguf").gguf
    return task_accuracy(gguf, held_out, system_prompt=SYSTEM_PROMPT, max_tokens=MAX_TOKENS)


@pytest.mark.slow
def test_llama_cpp_answers_match_transformers_answers(demo_build, held_out, f16_accuracy):
    """Row by row, the F16 GGUF through llama.cpp is right where the merged HF model is right."""
    import torch

    from edgetune.hf import load_causal_lm, load_tokenizer

    out, _, _ = demo_build
    tokenizer = load_tokenizer(out / "merged")
    model = load_causal_lm(out / "merged").eval()
    hf_wrong = set()
    for row in held_out:
        ids = tokenizer.apply_chat_template(prompt_messages(SYSTEM_PROMPT, row), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                       eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
        if not answers_match(extract_answer(text, REASONING), row.answer):
            hf_wrong.add(row.source)
    assert f16_accuracy.total == len(held_out)
    assert set(f16_accuracy.wrong) == hf_wrong


@pytest.mark.slow
def test_wrong_expected_answers_score_zero(demo_build, held_out, f16_accuracy):
    out, _, _ = demo_build
    gguf = GgufModel.load(out / "gguf").gguf
    wrong = [dataclasses.replace(r, answer="-987654") for r in held_out]
    result = task_accuracy(gguf, wrong, system_prompt=SYSTEM_PROMPT, max_tokens=MAX_TOKENS)
    assert result.correct == 0 and result.accuracy == 0.0
    assert result.truncated == f16_accuracy.truncated  # same greedy answers, only the key changed
    assert result.as_dict()["task_total"] == len(held_out)


@pytest.mark.slow
def test_the_models_own_answers_score_full_marks(demo_build, held_out, f16_accuracy):
    """The positive control: with the model's own answers as the key, every answered row counts."""
    out, _, _ = demo_build
    gguf = GgufModel.load(out / "gguf").gguf
    answered = [(r, a) for r, a in zip(held_out, f16_accuracy.answers) if a]
    assert len(answered) >= len(held_out) // 2  # the demo model answers in the trained format
    keyed = [dataclasses.replace(r, answer=a) for r, a in answered]
    result = task_accuracy(gguf, keyed, system_prompt=SYSTEM_PROMPT, max_tokens=MAX_TOKENS)
    assert result.correct == result.total == len(keyed)


# --------------------------------------------------------------------------- intervals

@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II,
    # method 3 (Wilson score, no continuity correction).
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718), (29, 29, 0.8830, 1.0)])
def test_wilson_interval_matches_published_values(k, n, low, high):
    assert [round(x, 4) for x in wilson(k, n)] == [low, high]


def test_paired_interval_matches_a_published_example():
    """Agresti, Categorical Data Analysis (2nd ed., 10.1.1): approval of the Prime Minister in
    two surveys of the same 1,600 people, 150 approve -> disapprove and 86 the reverse: the
    difference 0.04 has the 95% interval (0.021, 0.059). Agresti-Min's +0.5 per cell changes it
    by less than 0.0005 at this n."""
    low, high = paired_difference(150, 86, 1600)
    assert (round(low, 3), round(high, 3)) == (0.021, 0.059)
    # Only the discordant questions count; none of 36 still leaves +-z/(n+2).
    assert paired_difference(0, 0, 36) == pytest.approx((-1.959964 / 38, 1.959964 / 38))
    low, high = paired_difference(1, 3, 12)  # one lost, three gained: the mirror image
    assert paired_difference(3, 1, 12) == pytest.approx((-high, -low))


def test_accuracy_records_its_count_interval_and_paired_drop():
    f16 = Accuracy(correct=3, total=5, truncated=0, mean_tokens=1.0,
                   right=(True, True, True, False, False))
    quant = Accuracy(correct=2, total=5, truncated=0, mean_tokens=1.0,
                     right=(True, False, False, False, True))
    assert f16.as_dict()["task_total"] == 5
    assert f16.as_dict()["task_ci95"] == list(wilson(3, 5))
    drop = paired_drop(f16, quant)
    assert drop["task_lost"] == 2 and drop["task_gained"] == 1
    assert drop["task_accuracy_drop"] == pytest.approx(0.2)
    assert drop["task_drop_ci95"] == list(paired_difference(2, 1, 5))


# --------------------------------------------------------------------------- generation

@pytest.mark.slow
def test_batched_answers_are_the_chat_completion_answers(demo_build, held_out, f16_accuracy):
    """One question at a time, llama.cpp's batch API gives, row by row, the answers
    llama-cpp-python's create_chat_completion gives (what accuracy used before): the same prompt,
    greedy choice and end of turn. Eight at a time, a near tie may go the other way, as batch
    shapes change the float sums (ggml-org/llama.cpp#6583): one row in 36 on the demo model."""
    out, _, _ = demo_build
    gguf = GgufModel.load(out / "gguf").gguf
    llm = open_gguf(gguf, n_ctx=1024)
    try:
        one_by_one = []
        for row in held_out:
            llm.reset()
            reply = llm.create_chat_completion(prompt_messages(SYSTEM_PROMPT, row), temperature=0.0,
                                               top_k=1, max_tokens=MAX_TOKENS, seed=0)
            one_by_one.append(extract_answer(reply["choices"][0]["message"]["content"] or ""))
    finally:
        llm.close()
    single = task_accuracy(gguf, held_out, system_prompt=SYSTEM_PROMPT, max_tokens=MAX_TOKENS,
                           parallel=1)
    assert single.answers == tuple(one_by_one)
    assert sum(a != b for a, b in zip(f16_accuracy.answers, one_by_one)) <= 1


@pytest.mark.slow
def test_answer_cap_follows_the_reference_answers(demo_build, held_out):
    out, _, _ = demo_build
    gguf = GgufModel.load(out / "gguf").gguf
    llm = open_gguf(gguf, vocab_only=True)
    try:
        lengths = sorted(len(llm.tokenize(formatted_answer(r).encode(), add_bos=False))
                         for r in held_out)
        cap = answer_budget(llm, held_out, REASONING, 256)
        # 2 x the 95th percentile + 16: the demo's worked solutions are short.
        assert cap == 2 * lengths[34] + 16 < 256
        assert answer_budget(llm, held_out, REASONING, 40) == 40  # never past max_tokens
        bare = [dataclasses.replace(r, reasoning=None) for r in held_out]
        assert answer_budget(llm, bare, REASONING, 256) == 256  # no worked solutions: no cap
    finally:
        llm.close()
    result = task_accuracy(gguf, held_out, system_prompt=SYSTEM_PROMPT)
    assert result.max_tokens == cap and result.as_dict()["task_max_tokens"] == cap
