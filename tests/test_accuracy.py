"""Task accuracy in llama.cpp, checked against the same model answering through transformers."""

from __future__ import annotations

import dataclasses

import pytest

from edgetune.accuracy import task_accuracy
from edgetune.conversations import prompt_messages
from edgetune.artifacts import GgufModel
from edgetune.data import load_qa, split_qa
from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
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
