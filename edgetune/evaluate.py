"""evaluate: every quant against the F16 model, in llama.cpp, on held-out data.

Per quant: fidelity against F16 in lockstep (perplexity and its ratio, mean/p99 KL divergence,
top-1 agreement, delta-p: ``edgetune.fidelity``), task accuracy on the held-out questions
(``edgetune.accuracy``), prefill/decode speed, file size and the RAM a phone needs. With a
profile, each quant is gated against its thresholds (``edgetune.gates``); a failure stops the
build after eval.json is written, unless the failure is explicitly accepted.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetune import llamacpp
from edgetune.llamacpp import gguf_field
from edgetune.accuracy import task_accuracy
from edgetune.artifacts import EvalReport, GgufModel, QuantizedModels, atomic_dir, write_json_atomic
from edgetune.data import QARow
from edgetune.errors import ToolchainError
from edgetune.gates import GateFailure, gate_report
from edgetune.profiles import QuantProfile


def evaluate(f16: GgufModel, quants: QuantizedModels, eval_texts: Sequence[str], out: Path, *,
             context_length: int, n_ctx: int = 512, overwrite: bool = False,
             qa_rows: Sequence[QARow] = (), system_prompt: str = "", answer_format: str = "reasoning",
             max_answer_tokens: int = 256, profile: QuantProfile | None = None,
             accept_gate_failure: bool = False,
             on_progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Measure F16 and each quant; write ``out/eval.json``; gate the quants against ``profile``.

    Raises ``GateFailure`` (after writing the report) when a quant fails its gates and
    ``accept_gate_failure`` is false.
    """
    from edgetune.fidelity import compare, eval_tokens

    models = {"F16": f16.gguf, **{q: quants.gguf(q) for q in quants.files}}
    tokens = eval_tokens(f16.gguf, "\n\n".join(eval_texts))
    results: dict[str, dict] = {}
    for i, (quant, path) in enumerate(models.items()):
        if on_progress:
            on_progress(quant, i, len(models))
        metrics: dict = {"file": path.name, "size_bytes": path.stat().st_size}
        if quant != "F16":
            metrics.update(compare(f16.gguf, path, tokens, n_ctx=n_ctx).as_dict())
            metrics["imatrix"] = quant in quants.without_imatrix
            if metrics["imatrix"]:
                plain = compare(f16.gguf, quants.path / quants.without_imatrix[quant], tokens,
                                n_ctx=n_ctx).as_dict()
                metrics["without_imatrix"] = plain
                if plain["kld_mean"] > 0:
                    metrics["imatrix_kld_reduction"] = 1 - metrics["kld_mean"] / plain["kld_mean"]
        metrics.update(speed(path))
        metrics["ram_needed_bytes"] = ram_needed(path, context_length)
        metrics["k_quant_fallbacks"] = quants.fallbacks.get(quant, 0)
        if qa_rows:
            metrics.update(task_accuracy(path, qa_rows, system_prompt=system_prompt,
                                         answer_format=answer_format,
                                         max_tokens=max_answer_tokens).as_dict())
        results[quant] = metrics
    _fill_reference(results)
    report: dict = {"context_length": context_length, "eval_ctx": n_ctx, "eval_tokens": len(tokens),
                    "task_rows": len(qa_rows), "quants": results}
    verdicts = {}
    if profile is not None:
        verdicts = gate_report(results, profile)
        for quant, verdict in verdicts.items():
            results[quant]["gate"] = verdict.as_dict()
            results[quant]["gate_passed"] = verdict.passed
        report["target"] = profile.name
        report["gates_passed"] = all(v.passed for v in verdicts.values())
        report["accepted_gate_failure"] = bool(accept_gate_failure and not report["gates_passed"])
    with atomic_dir(out, overwrite=overwrite) as scratch:
        write_json_atomic(scratch / "eval.json", report)
        artifact = EvalReport(path=scratch)
        artifact.save()
    if verdicts and not report["gates_passed"] and not accept_gate_failure:
        raise GateFailure(verdicts, profile.name)
    return dataclasses.replace(artifact, path=out)


def _fill_reference(results: dict[str, dict]) -> None:
    """F16 is the reference: its perplexity is every comparison's base, its ratios are 1."""
    f16 = results["F16"]
    compared = [m for q, m in results.items() if q != "F16"]
    if compared:
        f16.update(ppl=compared[0]["ppl_base"], ppl_ratio=1.0, kld_mean=0.0, top1=1.0,
                   tokens=compared[0]["tokens"], chunks=compared[0]["chunks"])
    if "task_accuracy" in f16:
        for metrics in compared:
            metrics["task_accuracy_drop"] = f16["task_accuracy"] - metrics["task_accuracy"]


def speed(path: Path, *, prompt_tokens: int = 128, gen_tokens: int = 32, reps: int = 3) -> dict:
    """Prefill/decode tokens/s, time to first token and peak RSS, measured in a fresh process.

    The llama-bench way: a warm-up run, then the median of ``reps``, fixed threads, synchronised
    timers. A child process per model makes its peak RSS the model's own (load + run), not the
    high-water mark of everything this process loaded before.
    """
    import json
    import subprocess
    import sys

    code = ("import json, sys; from pathlib import Path; from edgetune.evaluate import _speed; "
            "print(json.dumps(_speed(Path(sys.argv[1]), *map(int, sys.argv[2:]))))")
    run = subprocess.run([sys.executable, "-c", code, str(path), str(prompt_tokens), str(gen_tokens),
                          str(reps)], capture_output=True, text=True)
    if run.returncode != 0:
        tail = " ".join(run.stderr.strip().splitlines()[-2:])
        raise ToolchainError(f"measuring the speed of {path.name} failed: {tail}",
                             hint="check that the GGUF loads with llama.cpp")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _speed(path: Path, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    import resource

    import llama_cpp

    llm = llamacpp.open_gguf(path, n_ctx=prompt_tokens + gen_tokens + 8)
    try:
        vocab = llm.n_vocab()
        prompt = [(i * 7919) % (vocab - 10) + 10 for i in range(prompt_tokens)]

        def run() -> tuple[float, float, float]:
            llm.reset()
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
            t0 = time.perf_counter()
            llm.eval(prompt)
            llama_cpp.llama_synchronize(llm.ctx)
            t1 = time.perf_counter()
            first = t1
            for i in range(gen_tokens):
                llm.eval([prompt[i % prompt_tokens]])
                if i == 0:
                    llama_cpp.llama_synchronize(llm.ctx)
                    first = time.perf_counter()
            t2 = time.perf_counter()
            return prompt_tokens / (t1 - t0), gen_tokens / (t2 - t1), first - t0

        run()  # warm-up
        samples = [run() for _ in range(reps)]
    finally:
        llm.close()
    return {
        "prefill_tps": statistics.median(s[0] for s in samples),
        "decode_tps": statistics.median(s[1] for s in samples),
        "ttft_ms": 1000 * statistics.median(s[2] for s in samples),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "threads": llamacpp.threads(),
    }


def ram_needed(path: Path, context_length: int) -> int:
    """PocketPal's estimate: (file + KV cache + compute buffer) x 1.1 (ANCHORS.md 3)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = gguf_field(reader, "general.architecture")
    layers = int(gguf_field(reader, f"{arch}.block_count"))
    embd = int(gguf_field(reader, f"{arch}.embedding_length"))
    heads = int(gguf_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(gguf_field(reader, f"{arch}.attention.head_count_kv") or heads)
    head_dim = int(gguf_field(reader, f"{arch}.attention.key_length") or embd // heads)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    kv = 2 * layers * context_length * head_dim * kv_heads * 2
    buffer = (vocab + embd) * 512 * 4
    return int((path.stat().st_size + kv + buffer) * 1.1)
