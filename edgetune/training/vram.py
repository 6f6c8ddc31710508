"""vram: estimate the peak GPU memory of a LoRA training run before starting it.

A GRPO step has two phases that do not hold their big buffers at the same time:

* generation: the policy samples ``num_generations * prompts_per_step`` completions with a
  KV cache that grows to ``prompt + completion`` tokens per sequence;
* training: forward/backward over the same sequences (one micro-batch; ``train.py`` sets
  ``per_device_train_batch_size`` to the whole generation batch) with gradient checkpointing,
  plus the completion logits for the log-probabilities.

Both phases keep the base weights and the LoRA weights, gradients and AdamW moments, so

    total = (weights + lora + max(kv_cache, activations + logits)) * 1.05 + 0.3 GiB

The terms, and why each is sized as it is (bytes; ``t`` = tokens of one micro-batch):

* weights: 2 bytes/param in 16-bit. In 4-bit (bitsandbytes nf4 with double quantisation, as
  Unsloth loads it) the decoder's linear layers take 0.5 byte/param plus an 8-bit absmax per
  64 values and an fp32 scale per 256 absmax (~0.016 byte/param); embeddings, lm_head, norms
  and biases stay 16-bit; and Unsloth dequantises one weight at a time into a 16-bit buffer
  during forward and backward, so the largest projection (hidden x intermediate) is added.
* lora: ``r * (in + out)`` parameters for q, k, v, o, gate, up, down in every layer, at 16
  bytes each: fp32 weight (PEFT keeps adapters in fp32; it is also the master copy), fp32
  gradient and AdamW's two fp32 moments.
* kv_cache: ``2 (k and v) * layers * kv_heads * head_dim * (prompt + completion) * sequences
  * 2 bytes``. Untrained models rarely stop early, so every sequence is counted to the cap.
* activations: with gradient checkpointing each layer keeps only its input (``layers * t *
  hidden * 2``) and one layer at a time is recomputed in full with its gradients
  (``t * (10 * hidden + 3 * intermediate) * 2``: q/k/v/o, attention output, norms and
  residuals, and the gate/up/act products of the MLP). Without checkpointing every layer
  keeps its full activations.
* logits: the completion tokens of the micro-batch times the vocabulary, 4 bytes each (bf16
  logits and their gradient, or one fp32 copy). TRL 1.15+ (fused, chunked log-prob head) and
  Unsloth never hold all of them at once, so this is the term with the most slack; it keeps
  the bound valid on unfused paths.
* overhead: the CUDA context and cuBLAS workspaces (a fixed 0.3 GiB, which torch's
  ``max_memory_allocated`` does not see) plus 5 % for allocator fragmentation.

Calibration (FACTS.md, H100, Qwen2.5-1.5B-shaped model, LoRA r=16 on 7 projections,
8 generations x 128 new tokens, 8 sequences per micro-batch, ~50-token prompts), measured
peak allocated vs this estimate: Unsloth 4-bit 1.67 GiB vs 2.58 GiB (+54 %); Unsloth 16-bit
and plain TRL bf16 3.45 GiB vs 4.45 GiB (+29 %). The measurements leave ~0.3 GiB beside the
weights and LoRA states, far below the 0.8 GiB of activations + logits counted here: the
estimate is an upper bound by design, and ``tests/test_vram.py`` pins it between +0 % and
+60 % of those numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import ConfigError, ModelError

GIB = 2**30
# Per-step fixed costs: CUDA context + cuBLAS workspace, and allocator fragmentation.
FIXED_OVERHEAD_GIB = 0.3
FRAGMENTATION = 0.05
# bitsandbytes nf4 with double quantisation (Unsloth's setting): 4 bits per value, an 8-bit
# absmax per 64-value block, and an fp32 scale per 256 absmax values.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
LORA_BYTES_PER_PARAM = 16  # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
ACT_HIDDEN_FACTOR = 10
ACT_INTERMEDIATE_FACTOR = 3
MIN_GENERATIONS = 2  # GRPO compares completions within a group
MIN_COMPLETION_SUGGESTION = 64


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer that memory depends on."""

    params: int  # total parameter count (embeddings counted once when tied)
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """Shape of a Hugging Face ``config.json`` (llama, qwen2, qwen3, gemma3 keys)."""
        cfg = dict(config)
        if isinstance(cfg.get("text_config"), dict):  # gemma3 multimodal nests the decoder
            cfg = {**cfg, **cfg["text_config"]}
        model_type = str(config.get("model_type") or cfg.get("model_type") or "")

        def size(key: str) -> int:
            try:
                return int(cfg[key])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError(f"config.json has no usable {key} ({cfg.get(key)!r})",
                                 hint="edgetune needs a llama/qwen2/qwen3/gemma3-style config.json") from exc

        hidden, intermediate = size("hidden_size"), size("intermediate_size")
        n_layers, n_heads, vocab = size("num_hidden_layers"), size("num_attention_heads"), size("vocab_size")
        n_kv_heads = int(cfg.get("num_key_value_heads") or n_heads)
        head_dim = int(cfg.get("head_dim") or hidden // n_heads)
        # Gemma ties its embeddings by default; llama and qwen configs say so explicitly.
        tie = bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma")))
        qkv_bias = bool(cfg.get("attention_bias", False)) or model_type == "qwen2"
        # qwen3 and gemma3 normalise queries and keys per head.
        qk_norm = model_type.startswith(("qwen3", "gemma3"))
        norms_per_layer = 4 if model_type.startswith("gemma") else 2

        q_out, kv_out = n_heads * head_dim, n_kv_heads * head_dim
        attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
        if qkv_bias:
            attention += q_out + 2 * kv_out
        if cfg.get("attention_bias", False):
            attention += hidden  # o_proj bias (llama's attention_bias covers o too)
        mlp = 3 * hidden * intermediate
        norms = norms_per_layer * hidden + (2 * head_dim if qk_norm else 0)
        embeddings = vocab * hidden
        params = (embeddings + n_layers * (attention + mlp + norms) + hidden
                  + (0 if tie else embeddings))
        return cls(params=params, n_layers=n_layers, hidden=hidden, intermediate=intermediate,
                   n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, vocab=vocab,
                   tie_embeddings=tie)

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelShape:
        """Shape of the model whose ``config.json`` is in ``model_dir``."""
        path = Path(model_dir) / "config.json"
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"{model_dir} has no config.json",
                             hint="point --base-model at a Hugging Face model directory") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path} cannot be read ({exc})",
                             hint="check the model directory is complete") from exc
        if not isinstance(config, dict):
            raise ModelError(f"{path} is not a JSON object", hint="check the model directory is complete")
        return cls.from_config(config)

    @property
    def decoder_linear_params(self) -> int:
        """Parameters of one layer's q/k/v/o and gate/up/down weights (what nf4 quantises)."""
        q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return 2 * self.hidden * q_out + 2 * self.hidden * kv_out + 3 * self.hidden * self.intermediate

    def lora_params(self, r: int) -> int:
        """``r * (in + out)`` for the seven projections of every layer."""
        h, i = self.hidden, self.intermediate
        q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        per_layer = (h + q_out) + 2 * (h + kv_out) + (q_out + h) + 2 * (h + i) + (i + h)
        return r * per_layer * self.n_layers


@dataclass(frozen=True)
class VramEstimate:
    """Peak GPU memory of a run, by component, in GiB."""

    weights_gib: float
    lora_gib: float
    kv_cache_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    total_gib: float
    base_bits: int = 16

    def lines(self) -> list[str]:
        """One line per component; generation and training share the memory, so only the
        larger of the two phases counts towards the total."""
        generation = self.kv_cache_gib
        training = self.activations_gib + self.logits_gib
        gen_note = "" if generation >= training else "  (generation; not counted, training is larger)"
        train_note = "" if training > generation else "  (training; not counted, generation is larger)"
        rows = [
            (f"weights ({self.base_bits}-bit)", self.weights_gib, ""),
            ("LoRA + grads + AdamW", self.lora_gib, ""),
            ("KV cache", self.kv_cache_gib, gen_note),
            ("activations", self.activations_gib, train_note),
            ("logits", self.logits_gib, train_note),
            ("overhead", self.overhead_gib, ""),
            ("total", self.total_gib, ""),
        ]
        return [f"{name:<22}{gib:6.2f} GiB{note}" for name, gib, note in rows]


def estimate_vram(shape: ModelShape, *, base_bits: int, lora_r: int, num_generations: int,
                  prompts_per_step: int, max_prompt_length: int, max_completion_length: int,
                  gradient_checkpointing: bool = True) -> VramEstimate:
    """Upper-bound estimate of the peak memory of a LoRA GRPO run (formulas: module docstring).

    For SFT pass ``num_generations=1``, ``prompts_per_step`` = the batch size,
    ``max_prompt_length=0`` and ``max_completion_length`` = the longest sequence (SFT scores
    every token); nothing is generated, and the KV-cache term, smaller than the training
    phase it shares memory with, does not count.
    """
    if base_bits not in (4, 16):
        raise ValueError(f"base_bits must be 4 or 16, not {base_bits}")
    sequences = num_generations * prompts_per_step
    seq_len = max_prompt_length + max_completion_length
    tokens = sequences * seq_len

    if base_bits == 16:
        weights = shape.params * 2
    else:
        linear = shape.n_layers * shape.decoder_linear_params
        other = shape.params - linear  # embeddings, lm_head, norms, biases: kept in 16-bit
        dequant_buffer = shape.hidden * shape.intermediate * 2  # the largest projection
        weights = linear * NF4_BYTES_PER_PARAM + other * 2 + dequant_buffer

    lora = shape.lora_params(lora_r) * LORA_BYTES_PER_PARAM
    kv_cache = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * sequences * 2
    one_layer = tokens * (ACT_HIDDEN_FACTOR * shape.hidden + ACT_INTERMEDIATE_FACTOR * shape.intermediate) * 2
    if gradient_checkpointing:
        activations = shape.n_layers * tokens * shape.hidden * 2 + one_layer
    else:
        activations = shape.n_layers * one_layer
    logits = sequences * max_completion_length * shape.vocab * 4

    peak = weights + lora + max(kv_cache, activations + logits)
    overhead = FIXED_OVERHEAD_GIB * GIB + FRAGMENTATION * peak
    return VramEstimate(
        weights_gib=weights / GIB, lora_gib=lora / GIB, kv_cache_gib=kv_cache / GIB,
        activations_gib=activations / GIB, logits_gib=logits / GIB, overhead_gib=overhead / GIB,
        total_gib=(peak + overhead) / GIB, base_bits=base_bits,
    )


def gpu_memory() -> tuple[int, int] | None:
    """``(free_bytes, total_bytes)`` of cuda:0, or None without CUDA (or without torch)."""
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(0)
    except RuntimeError:  # a driver that is present but unusable
        return None
    return int(free), int(total)


def check_fits(shape: ModelShape, total_bytes: int, *, base_bits: int, lora_r: int,
               num_generations: int, prompts_per_step: int, max_prompt_length: int,
               max_completion_length: int, headroom: float = 0.9) -> VramEstimate:
    """The run's estimate when it fits in ``headroom`` of the GPU; ConfigError when it does not,
    with the breakdown and concrete settings (each re-estimated) that would fit."""
    settings = dict(base_bits=base_bits, lora_r=lora_r, num_generations=num_generations,
                    prompts_per_step=prompts_per_step, max_prompt_length=max_prompt_length,
                    max_completion_length=max_completion_length)
    budget = headroom * total_bytes

    def fits(**changes) -> bool:
        return estimate_vram(shape, **{**settings, **changes}).total_gib * GIB <= budget

    estimate = estimate_vram(shape, **settings)
    if estimate.total_gib * GIB <= budget:
        return estimate

    hints = []
    if base_bits == 16:
        enough = "" if fits(base_bits=4) else ", not enough on its own"
        hints.append(f"load the base in 4-bit (--base-bits 4{enough})")
    if num_generations > MIN_GENERATIONS:
        n = num_generations
        while n > MIN_GENERATIONS and not fits(num_generations=n):
            n = max(MIN_GENERATIONS, n // 2)
        enough = "" if fits(num_generations=n) else ", not enough on its own"
        hints.append(f"use fewer generations (--num-generations {n}{enough})")
    if max_completion_length > MIN_COMPLETION_SUGGESTION:
        # The longest multiple of 64 that fits; estimates grow with length, so walk down.
        n = (max_completion_length - 1) // 64 * 64
        while n > MIN_COMPLETION_SUGGESTION and not fits(max_completion_length=n):
            n -= 64
        enough = "" if fits(max_completion_length=n) else ", not enough on its own"
        hints.append(f"shorter completions (--max-completion-length {n}{enough})")
    hints.append("a smaller base model")

    gpu_gib = total_bytes / GIB
    message = (f"this run needs an estimated {estimate.total_gib:.1f} GiB of GPU memory, more than "
               f"{headroom:.0%} of the {gpu_gib:.1f} GiB on the GPU:\n  " + "\n  ".join(estimate.lines()))
    raise ConfigError(message, hint="try " + "; or ".join(hints))
