"""evaluate: every quant against the F16 model, in llama.cpp, on held-out text.

First version: perplexity (llama.cpp's method), prefill/decode speed, file size and the RAM a
phone needs. Quality gates, KL divergence and task accuracy build on this (see the issues).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetune import llamacpp
from edgetune.artifacts import EvalReport, GgufModel, QuantizedModels, atomic_dir, write_json_atomic
from edgetune.errors import DataError


def evaluate(f16: GgufModel, quants: QuantizedModels, eval_texts: Sequence[str], out: Path, *,
             context_length: int, n_ctx: int = 512, overwrite: bool = False,
             on_progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Measure F16 and each quant; write ``out/eval.json``."""
    models = {"F16": f16.gguf, **{q: quants.gguf(q) for q in quants.files}}
    results: dict[str, dict] = {}
    for i, (quant, path) in enumerate(models.items()):
        if on_progress:
            on_progress(quant, i, len(models))
        metrics = {"file": path.name, "size_bytes": path.stat().st_size}
        metrics.update(perplexity(path, eval_texts, n_ctx=n_ctx))
        metrics.update(speed(path))
        metrics["ram_needed_bytes"] = ram_needed(path, context_length)
        metrics["k_quant_fallbacks"] = quants.fallbacks.get(quant, 0)
        results[quant] = metrics
    base_ppl = results["F16"]["ppl"]
    for metrics in results.values():
        metrics["ppl_ratio"] = metrics["ppl"] / base_ppl
    report = {"context_length": context_length, "eval_ctx": n_ctx, "quants": results}
    with atomic_dir(out, overwrite=overwrite) as scratch:
        write_json_atomic(scratch / "eval.json", report)
        artifact = EvalReport(path=scratch)
        artifact.save()
    return dataclasses.replace(artifact, path=out)


def perplexity(path: Path, texts: Sequence[str], *, n_ctx: int = 512) -> dict:
    """llama.cpp's perplexity: ``n_ctx`` chunks, only the second half of each chunk scored.

    Scoring the second half only gives every scored token at least n_ctx/2 tokens of context,
    as ``llama-perplexity`` does, so our numbers are comparable with its output.
    """
    import numpy as np

    llm = llamacpp.open_gguf(path, n_ctx=n_ctx, logits_all=True)
    try:
        tokens = llm.tokenize("\n\n".join(texts).encode(), add_bos=False, special=True)
        n_chunks = len(tokens) // n_ctx
        if n_chunks == 0:
            raise DataError(
                f"evaluation text has {len(tokens)} tokens, fewer than one {n_ctx}-token chunk",
                hint="add more held-out questions or lower the evaluation context",
            )
        nll, count = 0.0, 0
        first = n_ctx // 2
        for c in range(n_chunks):
            chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
            llm.reset()
            llm.eval(chunk)
            logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
            scored = logits[first:n_ctx - 1]
            targets = np.asarray(chunk[first + 1:n_ctx])
            shifted = scored - scored.max(axis=1, keepdims=True)
            logprobs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            nll -= float(logprobs[np.arange(len(targets)), targets].sum())
            count += len(targets)
    finally:
        llm.close()
    return {"ppl": math.exp(nll / count), "ppl_tokens": count, "ppl_chunks": n_chunks}


def speed(path: Path, *, prompt_tokens: int = 128, gen_tokens: int = 32, reps: int = 3) -> dict:
    """Prefill and decode tokens/s, the llama-bench way: warm-up, then the median of ``reps``."""
    import llama_cpp

    llm = llamacpp.open_gguf(path, n_ctx=prompt_tokens + gen_tokens + 8)
    try:
        vocab = llm.n_vocab()
        prompt = [(i * 7919) % (vocab - 10) + 10 for i in range(prompt_tokens)]

        def run() -> tuple[float, float]:
            llm.reset()
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
            t0 = time.perf_counter()
            llm.eval(prompt)
            llama_cpp.llama_synchronize(llm.ctx)
            t1 = time.perf_counter()
            for i in range(gen_tokens):
                llm.eval([prompt[i % prompt_tokens]])
            llama_cpp.llama_synchronize(llm.ctx)
            t2 = time.perf_counter()
            return prompt_tokens / (t1 - t0), gen_tokens / (t2 - t1)

        run()  # warm-up
        samples = [run() for _ in range(reps)]
    finally:
        llm.close()
    return {
        "prefill_tps": statistics.median(s[0] for s in samples),
        "decode_tps": statistics.median(s[1] for s in samples),
        "threads": llamacpp.threads(),
    }


def ram_needed(path: Path, context_length: int) -> int:
    """PocketPal's estimate: (file + KV cache + compute buffer) x 1.1 (ANCHORS.md 3)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    layers = int(_field(reader, f"{arch}.block_count"))
    embd = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv") or heads)
    head_dim = int(_field(reader, f"{arch}.attention.key_length") or embd // heads)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    kv = 2 * layers * context_length * head_dim * kv_heads * 2
    buffer = (vocab + embd) * 512 * 4
    return int((path.stat().st_size + kv + buffer) * 1.1)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode()
    return value[0]
