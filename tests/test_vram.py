"""Tests for edgetune.training.vram: the peak-memory estimate and the refusal before a run."""

from __future__ import annotations

import json
import re

import pytest

from edgetune.errors import ConfigError, EdgetuneError
from edgetune.training.vram import GIB, ModelShape, check_fits, estimate_vram, gpu_memory

# The published configs (the keys that matter), with their published parameter counts.
QWEN25_1_5B = dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                   tie_word_embeddings=True)
QWEN25_3B = dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                 num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True)
QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                 tie_word_embeddings=False)
LLAMA32_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                  tie_word_embeddings=True, attention_bias=False)

EIGHT_GIB = 8 * GIB

# FACTS.md "Training stack": H100, Qwen2.5-1.5B-shaped, LoRA r=16, 8 generations x 128 new tokens,
# 8 sequences per micro-batch, ~50-token prompts.
CALIBRATION = dict(lora_r=16, num_generations=8, prompts_per_step=1, max_prompt_length=50,
                   max_completion_length=128)
MEASURED_PEAK_GIB = [("unsloth 4-bit", 4, 1.67), ("unsloth 16-bit", 16, 3.45), ("TRL bf16", 16, 3.45)]

RUN = dict(base_bits=4, lora_r=16, num_generations=8, prompts_per_step=1, max_prompt_length=256,
           max_completion_length=512)


def shape(config: dict = QWEN25_1_5B) -> ModelShape:
    return ModelShape.from_config(config)


@pytest.mark.parametrize("config, billions", [
    (QWEN25_1_5B, 1.54), (QWEN25_3B, 3.09), (QWEN25_7B, 7.62), (LLAMA32_1B, 1.24),
])
def test_parameter_count_matches_published(config, billions):
    assert shape(config).params / 1e9 == pytest.approx(billions, rel=0.01)


def test_from_config_reads_dimensions_and_defaults():
    s = shape(LLAMA32_1B)
    assert (s.n_layers, s.hidden, s.intermediate, s.n_heads, s.n_kv_heads, s.head_dim, s.vocab) == (
        16, 2048, 8192, 32, 8, 64, 128256)
    assert s.tie_embeddings
    plain = {k: v for k, v in QWEN25_7B.items() if k not in ("num_key_value_heads", "tie_word_embeddings")}
    s = shape(plain)
    assert s.n_kv_heads == s.n_heads == 28
    assert s.head_dim == 3584 // 28
    assert not s.tie_embeddings


def test_qwen2_counts_qkv_bias_and_untied_head():
    llama_style = {**QWEN25_7B, "model_type": "llama"}
    bias = 28 * (28 * 128 + 2 * 4 * 128)
    assert shape(QWEN25_7B).params - shape(llama_style).params == bias
    tied = {**QWEN25_7B, "tie_word_embeddings": True}
    assert shape(QWEN25_7B).params - shape(tied).params == 152064 * 3584


def test_gemma3_text_config_nesting():
    text = dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208)
    nested = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": text}
    s = shape(nested)
    assert (s.n_layers, s.hidden, s.head_dim, s.n_kv_heads, s.vocab) == (34, 2560, 256, 4, 262208)
    assert s.tie_embeddings  # gemma ties by default
    assert s.params / 1e9 == pytest.approx(3.88, rel=0.02)  # Gemma 3 4B less its ~0.4B vision tower
    assert s == shape({**text, "model_type": "gemma3"})


def test_from_dir_reads_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_1_5B))
    assert ModelShape.from_dir(tmp_path) == shape(QWEN25_1_5B)


def test_from_dir_without_config_is_an_edgetune_error(tmp_path):
    with pytest.raises(EdgetuneError) as err:
        ModelShape.from_dir(tmp_path)
    assert "config.json" in err.value.message
    assert err.value.hint


def test_from_dir_with_incomplete_config_is_an_edgetune_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(EdgetuneError) as err:
        ModelShape.from_dir(tmp_path)
    assert "hidden_size" in err.value.message


@pytest.mark.parametrize("variant, bits, measured", MEASURED_PEAK_GIB)
def test_estimate_is_a_modest_upper_bound_of_measured_peaks(variant, bits, measured):
    total = estimate_vram(shape(), base_bits=bits, **CALIBRATION).total_gib
    assert measured <= total <= 1.6 * measured, f"{variant}: {total:.2f} GiB vs measured {measured}"


def test_four_bit_is_smaller_than_sixteen():
    four = estimate_vram(shape(), **RUN)
    sixteen = estimate_vram(shape(), **{**RUN, "base_bits": 16})
    assert four.weights_gib < sixteen.weights_gib / 2
    assert four.total_gib < sixteen.total_gib


@pytest.mark.parametrize("setting, values", [
    ("num_generations", [2, 4, 8, 16]),
    ("max_completion_length", [64, 128, 512, 1024, 4096]),
    ("lora_r", [4, 8, 16, 64, 128]),
    ("prompts_per_step", [1, 2, 4]),
])
def test_estimate_grows_with_the_run(setting, values):
    totals = [estimate_vram(shape(), **{**RUN, setting: v}).total_gib for v in values]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


def test_gradient_checkpointing_saves_memory():
    with_ckpt = estimate_vram(shape(), **RUN)
    without = estimate_vram(shape(), **RUN, gradient_checkpointing=False)
    assert without.activations_gib > 5 * with_ckpt.activations_gib


def test_estimate_components_add_up():
    e = estimate_vram(shape(QWEN25_3B), **RUN)
    peak = e.weights_gib + e.lora_gib + max(e.kv_cache_gib, e.activations_gib + e.logits_gib)
    assert e.total_gib == pytest.approx(peak + e.overhead_gib)
    assert 0.3 <= e.overhead_gib <= 0.3 + 0.1 * peak


def test_lines_name_every_component():
    lines = estimate_vram(shape(), **RUN).lines()
    text = "\n".join(lines)
    for word in ("weights (4-bit)", "LoRA", "KV cache", "activations", "logits", "overhead", "total"):
        assert word in text
    assert all(re.search(r"\d+\.\d\d GiB", line) for line in lines)


def test_base_bits_must_be_4_or_16():
    with pytest.raises(ValueError):
        estimate_vram(shape(), **{**RUN, "base_bits": 8})


def test_small_run_fits_on_8_gib():
    estimate = check_fits(shape(), EIGHT_GIB, **{**RUN, "max_completion_length": 256})
    assert estimate.total_gib * GIB <= 0.9 * EIGHT_GIB


def test_7b_in_16_bit_is_refused_with_4_bit_first():
    with pytest.raises(ConfigError) as err:
        check_fits(shape(QWEN25_7B), EIGHT_GIB, **{**RUN, "base_bits": 16, "max_completion_length": 1024})
    message, hint = err.value.message, err.value.hint
    assert "8.0 GiB on the GPU" in message and "weights (16-bit)" in message
    assert "--base-bits 4" in hint
    order = [hint.index(flag) for flag in ("--base-bits 4", "--num-generations", "--max-completion-length",
                                          "a smaller base model")]
    assert order == sorted(order)


def _suggested(hint: str, flag: str) -> int:
    match = re.search(rf"{flag} (\d+)", hint)
    assert match, hint
    return int(match.group(1))


def test_4_bit_refusal_suggests_settings_that_fit():
    run = {**RUN, "num_generations": 16}
    with pytest.raises(ConfigError) as err:
        check_fits(shape(QWEN25_3B), EIGHT_GIB, **run)
    hint = err.value.hint
    assert "--base-bits" not in hint
    generations = _suggested(hint, "--num-generations")
    assert 2 <= generations < 16
    check_fits(shape(QWEN25_3B), EIGHT_GIB, **{**run, "num_generations": generations})
    completion = _suggested(hint, "--max-completion-length")
    assert completion < 512
    check_fits(shape(QWEN25_3B), EIGHT_GIB, **{**run, "max_completion_length": completion})
    # The largest that fits: one more step up does not.
    with pytest.raises(ConfigError):
        check_fits(shape(QWEN25_3B), EIGHT_GIB, **{**run, "max_completion_length": completion + 64})


def test_hint_says_when_a_change_is_not_enough_alone():
    with pytest.raises(ConfigError) as err:
        check_fits(shape(QWEN25_7B), 4 * GIB, **{**RUN, "base_bits": 16})
    assert "--num-generations 2, not enough on its own" in err.value.hint


def test_gpu_memory_is_none_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_memory() is None


def test_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, edgetune.training.vram, edgetune.training.health; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
