"""HF -> GGUF with llama.cpp's converter, and the two parity gates, on tiny real models."""

from __future__ import annotations

import sys
import json
import shutil

import pytest

from edgetune import hf
from edgetune.artifacts import MergedModel
from edgetune.convert import check_logit_parity, check_tokenizer_parity, convert
from edgetune.errors import ModelError, OutputExistsError, ParityError
from edgetune.profiles import QuantProfile
from edgetune.quantise import count_fallbacks, quantise
from edgetune.tinymodel import FAMILIES
from tests.conftest import chat_samples


def _profile(*quants: str) -> QuantProfile:
    return QuantProfile(name="test", description="", quants=quants, context_length=2048,
                        memory_budget_mb=4096)


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_every_family_with_parity(family, tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory(family)
    texts = chat_samples(hf.load_tokenizer(model_dir))
    gguf = convert(MergedModel(path=model_dir), tmp_path / "gguf", name="Tiny", parity_texts=texts)

    assert gguf.gguf.is_file() and gguf.gguf.name == "Tiny-F16.gguf"
    assert gguf.tokenizer_parity["chat_template"] is True
    assert gguf.tokenizer_parity["eos_token_id"] == 4  # <|im_end|>, carried into the GGUF
    assert gguf.logit_parity["mean_kld"] < 1e-4
    assert gguf.logit_parity["top1"] >= 0.99
    assert json.loads((tmp_path / "gguf" / "artifact.json").read_text())["kind"] == "gguf_model"


def test_quantise_real_k_quants_without_fallback(tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory("llama")
    gguf = convert(MergedModel(path=model_dir), tmp_path / "gguf", name="Tiny",
                   parity_texts=chat_samples(hf.load_tokenizer(model_dir)))
    quants = quantise(gguf, _profile("Q4_K_M", "Q5_K_M", "Q8_0"), tmp_path / "q", name="Tiny")

    sizes = {q: quants.gguf(q).stat().st_size for q in quants.files}
    assert sizes["Q4_K_M"] < sizes["Q5_K_M"] < sizes["Q8_0"] < gguf.gguf.stat().st_size
    assert quants.fallbacks == {"Q4_K_M": 0, "Q5_K_M": 0, "Q8_0": 0}


def test_fallbacks_are_counted_for_narrow_models(tmp_path):
    """A 320-wide model cannot use K-quants for rows that are not multiples of 256."""
    from tests.conftest import SAMPLE_TEXTS
    from edgetune.tinymodel import TinySpec, build_tiny_model

    build_tiny_model(tmp_path / "hf", SAMPLE_TEXTS,
                     TinySpec(hidden_size=320, intermediate_size=640, num_heads=5, num_kv_heads=5))
    gguf = convert(MergedModel(path=tmp_path / "hf"), tmp_path / "gguf", name="Narrow",
                   parity_texts=chat_samples(hf.load_tokenizer(tmp_path / "hf")))
    quants = quantise(gguf, _profile("Q4_K_M"), tmp_path / "q", name="Narrow")
    assert quants.fallbacks["Q4_K_M"] > 0
    assert count_fallbacks(quants.gguf("Q4_K_M"), "Q4_K_M") == quants.fallbacks["Q4_K_M"]


def test_llama_cpp_log_lines_go_to_the_log_not_the_terminal(tmp_path, capfd):
    """Quantisation's "falling back" notes (rows not 256-aligned) and llama.cpp's other log
    lines land in the build log, not on stdout or stderr (Python's or the file descriptors);
    with no log file (``build(verbose=True)``) they go to stderr."""
    from tests.conftest import SAMPLE_TEXTS
    from edgetune import llamacpp
    from edgetune.tinymodel import TinySpec, build_tiny_model

    build_tiny_model(tmp_path / "hf", SAMPLE_TEXTS,
                     TinySpec(hidden_size=320, intermediate_size=640, num_heads=5, num_kv_heads=5))
    gguf = convert(MergedModel(path=tmp_path / "hf"), tmp_path / "gguf", name="Narrow",
                   parity_texts=chat_samples(hf.load_tokenizer(tmp_path / "hf")))
    capfd.readouterr()
    log = tmp_path / "build.log"
    with llamacpp.log_lines(log):
        quantise(gguf, _profile("Q4_K_M"), tmp_path / "q", name="Narrow")
    shown = "".join(capfd.readouterr())
    assert "falling back" in log.read_text() and "llama_model_quantize" in log.read_text()
    assert "falling back" not in shown and "llama_model" not in shown
    with llamacpp.log_lines(None):
        quantise(gguf, _profile("Q4_K_M"), tmp_path / "q2", name="Narrow")
    assert "falling back" in capfd.readouterr().err


def test_broken_tokenizer_fails_the_build(tiny_model_factory, tmp_path):
    """Special tokens the converter cannot see become plain text: parity must catch it."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_factory("llama"), broken)
    config_file = broken / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["added_tokens_decoder"]  # what transformers 5's save_pretrained does
    config_file.write_text(json.dumps(config))
    texts = chat_samples(hf.load_tokenizer(broken))

    with pytest.raises(ParityError, match="tokenizer parity failed"):
        convert(MergedModel(path=broken), tmp_path / "gguf", name="Broken", parity_texts=texts)
    assert not (tmp_path / "gguf").exists()  # nothing half-written left behind
    assert not list(tmp_path.glob(".gguf.*"))


def test_logit_parity_detects_a_different_model(tiny_model_factory, tmp_path):
    """The GGUF of one model must not pass as another (e.g. a merge that was not applied)."""
    llama = tiny_model_factory("llama")
    gguf = convert(MergedModel(path=llama), tmp_path / "gguf", name="A",
                   parity_texts=chat_samples(hf.load_tokenizer(llama)))
    other = tmp_path / "other"
    shutil.copytree(llama, other)
    import torch

    model = hf.load_causal_lm(other)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(other)
    with pytest.raises(ParityError, match="logit parity failed"):
        check_logit_parity(other, gguf.gguf, chat_samples(hf.load_tokenizer(llama)))


def test_tokenizer_parity_passes_on_chat_text(tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory("qwen2")
    gguf = convert(MergedModel(path=model_dir), tmp_path / "g", name="Q", parity_texts=["short text for the parity"] * 20)
    result = check_tokenizer_parity(model_dir, gguf.gguf, chat_samples(hf.load_tokenizer(model_dir)))
    assert result["texts"] == 12


def test_unsupported_architecture_is_a_clear_error(tiny_model_factory, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model_factory("llama"), odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unsupported architecture MambaForCausalLM"):
        convert(MergedModel(path=odd), tmp_path / "gguf", name="Odd", parity_texts=["x"])


def test_convert_refuses_existing_output(tiny_model_factory, tmp_path):
    (tmp_path / "gguf").mkdir()
    with pytest.raises(OutputExistsError):
        convert(MergedModel(path=tiny_model_factory("llama")), tmp_path / "gguf", name="T", parity_texts=["x"])


def test_reference_logits_come_from_a_clean_process_once_unsloth_is_loaded(tiny_model_factory,
                                                                           monkeypatch):
    """After a GPU training run Unsloth has patched the model classes in-process; the parity
    reference must then be computed by stock transformers in a child process, and agree."""
    import types

    import torch

    from edgetune.convert import reference_logits

    model = tiny_model_factory("llama")
    ids = list(range(3, 40))
    here = reference_logits(model, ids)
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    child = reference_logits(model, ids)
    assert child.dtype == torch.float64 and child.shape == here.shape
    assert torch.allclose(here, child, atol=1e-6)


# --------------------------------------------------------------------------- end of turn, BOS

def _native_model(family: str, tmp_path, chat=None):
    from tests.conftest import SAMPLE_TEXTS
    from edgetune.tinymodel import NATIVE_CHAT, TinySpec, build_tiny_model

    build_tiny_model(tmp_path / "hf", SAMPLE_TEXTS,
                     TinySpec(family=family, chat=chat or NATIVE_CHAT[family]))
    return tmp_path / "hf"


def _first_reply(gguf, token_id: int) -> dict:
    """A chat reply through llama-cpp-python's own chat handler (the GGUF's template) whose first
    sampled token is forced to ``token_id``: it must end the reply, not be printed or run on."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=512, verbose=False)
    try:
        reply = llm.create_chat_completion(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
            max_tokens=8, temperature=0.0, logit_bias={token_id: 1000.0})
    finally:
        llm.close()
    return reply["choices"][0]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_stops_at_its_own_end_of_turn(family, tmp_path):
    """Llama 3 ends a turn with <|eot_id|>, Gemma with <end_of_turn> (its EOS is <eos>), Qwen
    with <|im_end|>: the GGUF ends generation there, BOS and the rendered chat match HF."""
    from edgetune import turns
    from edgetune.tinymodel import CHAT_STYLES, NATIVE_CHAT

    style = CHAT_STYLES[NATIVE_CHAT[family]]
    model_dir = _native_model(family, tmp_path)
    tokenizer = hf.load_tokenizer(model_dir)
    gguf = convert(MergedModel(path=model_dir), tmp_path / "gguf", name="Tiny",
                   parity_texts=chat_samples(tokenizer))

    parity = gguf.tokenizer_parity
    assert parity["end_of_turn"] == style.end_of_turn
    assert parity["add_bos"] is style.add_bos
    assert parity["chat_tokens"] > 20 and parity["not_end_of_generation"] == []
    # The bundle's stop strings for phone apps: the end of turn first, then EOS when different.
    assert turns.stop_strings(tokenizer) == tuple(dict.fromkeys([style.end_of_turn,
                                                                 style.eos_token]))
    choice = _first_reply(gguf.gguf, tokenizer.convert_tokens_to_ids(style.end_of_turn))
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""


def test_an_end_of_turn_llama_cpp_does_not_know_is_declared_in_the_gguf(tmp_path):
    """A template whose turn ends with a token llama.cpp does not recognise by name: the raw
    conversion would run on past it; edgetune writes it as the GGUF's end-of-turn token."""
    from edgetune.convert import run_converter
    from edgetune.tinymodel import CHATML_TEMPLATE, ChatStyle

    custom = ChatStyle("custom", CHATML_TEMPLATE.replace("<|im_end|>", "<|turn_over|>"),
                       ("<|im_start|>", "<|turn_over|>"), "<|turn_over|>", "<s>", "</s>", "</s>",
                       False)
    model_dir = _native_model("llama", tmp_path, chat=custom)
    tokenizer = hf.load_tokenizer(model_dir)
    texts = chat_samples(tokenizer)
    turn_over = tokenizer.convert_tokens_to_ids("<|turn_over|>")

    run_converter(model_dir, tmp_path / "raw.gguf")
    raw = check_tokenizer_parity(model_dir, tmp_path / "raw.gguf", texts)
    assert raw["not_end_of_generation"] == ["<|turn_over|>"]
    assert _first_reply(tmp_path / "raw.gguf", turn_over)["finish_reason"] == "length"

    gguf = convert(MergedModel(path=model_dir), tmp_path / "gguf", name="Tiny", parity_texts=texts)
    assert gguf.tokenizer_parity["not_end_of_generation"] == []
    assert _first_reply(gguf.gguf, turn_over)["finish_reason"] == "stop"
    assert gguf.logit_parity["top1"] >= 0.99  # the rewritten file is still the same model


def test_a_bos_mismatch_fails_tokenizer_parity(tmp_path):
    """The GGUF adds BOS where the HF tokenizer does not: only a comparison with the special
    tokens on can see it (plain-text ids are the same)."""
    model_dir = _native_model("gemma3", tmp_path)
    texts = chat_samples(hf.load_tokenizer(model_dir))
    from edgetune.convert import run_converter

    run_converter(model_dir, tmp_path / "m.gguf")
    # transformers adds BOS through tokenizer.json's post-processor: take BOS out of it.
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    spec["post_processor"] = None
    (model_dir / "tokenizer.json").write_text(json.dumps(spec))
    assert hf.load_tokenizer(model_dir)("Hi")["input_ids"][0] != 1

    with pytest.raises(ParityError, match="special tokens"):
        check_tokenizer_parity(model_dir, tmp_path / "m.gguf", texts)


def test_a_chat_template_that_renders_differently_fails_parity(tmp_path):
    """The template in the GGUF and the HF model's must render one conversation identically."""
    from edgetune.convert import run_converter

    model_dir = _native_model("qwen2", tmp_path)
    texts = chat_samples(hf.load_tokenizer(model_dir))
    run_converter(model_dir, tmp_path / "m.gguf")
    template = model_dir / "chat_template.jinja"  # what transformers reads first
    template.write_text(template.read_text().replace("assistant\n", "assistant\n\n"))

    with pytest.raises(ParityError, match="chat template renders"):
        check_tokenizer_parity(model_dir, tmp_path / "m.gguf", texts)
