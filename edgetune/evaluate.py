"""evaluate: every quant against the F16 model, in llama.cpp, on held-out data.

Per quant: fidelity against F16 (perplexity and its ratio, mean/p99 KL divergence, top-1
agreement, delta-p: ``edgetune.fidelity``; every quant, and every quant built without the
imatrix, runs in lockstep with a single F16 pass), task accuracy on the held-out questions
(``edgetune.accuracy``), prefill/decode speed as llama-bench measures it, file size and the RAM
a phone needs. Each
quant is gated against the target profile's thresholds (``edgetune.gates``); a failure stops the
build after the report is written, unless the failure is explicitly accepted.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
from edgetune.report import write_reports


# Prefix of the name under which a quant built without the imatrix is compared.
_PLAIN = "without-imatrix/"


def evaluate(f16: GgufModel, quants: QuantizedModels, profile: QuantProfile,
             eval_texts: Sequence[str], out: Path, *, qa_rows: Sequence[QARow] = (),
             system_prompt: str = "", answer_format: str = "reasoning",
             max_answer_tokens: int = 256, accept_gate_failure: bool = False,
             overwrite: bool = False,
             on_progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Measure F16 and each quant at the profile's contexts, gate the quants against its
    thresholds, and write ``out/eval.json`` with its readable views ``eval.md`` and ``eval.png``.

    Raises ``GateFailure`` (after writing the report) when a quant fails its gates and
    ``accept_gate_failure`` is false.
    """
    from edgetune.fidelity import compare_many, eval_tokens

    models = {"F16": f16.gguf, **{q: quants.gguf(q) for q in quants.files}}
    # Every quant, and every quant built without the imatrix, against one F16 pass.
    plain = {q: quants.path / quants.without_imatrix[q]
             for q in quants.files if q in quants.without_imatrix}
    compared = {**{q: p for q, p in models.items() if q != "F16"},
                **{_PLAIN + q: p for q, p in plain.items()}}
    context_length, n_ctx = profile.context_length, profile.eval_context
    tokens = eval_tokens(f16.gguf, "\n\n".join(eval_texts))
    steps = len(models) + 1
    if on_progress:
        on_progress("fidelity", 0, steps)
    fidelity: dict = {}
    for group in fidelity_groups(f16.gguf.stat().st_size,
                                 {name: path.stat().st_size for name, path in compared.items()},
                                 _memory_bytes() // 2):
        fidelity.update(compare_many(f16.gguf, {name: compared[name] for name in group}, tokens,
                                     n_ctx=n_ctx))
    results: dict[str, dict] = {}
    for i, (quant, path) in enumerate(models.items(), start=1):
        if on_progress:
            on_progress(quant, i, steps)
        metrics: dict = {"file": path.name, "size_bytes": path.stat().st_size}
        if quant != "F16":
            metrics.update(fidelity[quant].as_dict())
            metrics["imatrix"] = quant in plain
            if metrics["imatrix"]:
                without = fidelity[_PLAIN + quant].as_dict()
                metrics["without_imatrix"] = without
                if without["kld_mean"] > 0:
                    metrics["imatrix_kld_reduction"] = 1 - metrics["kld_mean"] / without["kld_mean"]
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
    verdicts = gate_report(results, profile)
    for quant, verdict in verdicts.items():
        results[quant]["gate"] = verdict.as_dict()
        results[quant]["gate_passed"] = verdict.passed
    report["target"] = profile.name
    report["gates_passed"] = all(v.passed for v in verdicts.values())
    report["accepted_gate_failure"] = bool(accept_gate_failure and not report["gates_passed"])
    with atomic_dir(out, overwrite=overwrite) as scratch:
        write_json_atomic(scratch / "eval.json", report)
        # The readable views, from the JSON as written; with a failed gate they show why.
        write_reports(scratch, json.loads((scratch / "eval.json").read_text()))
        artifact = EvalReport(path=scratch)
        artifact.save()
    if verdicts and not report["gates_passed"] and not accept_gate_failure:
        raise GateFailure(verdicts, profile.name)
    return dataclasses.replace(artifact, path=out)


def fidelity_groups(base_bytes: int, sizes: dict[str, int], budget_bytes: int) -> list[list[str]]:
    """Split the quants into groups that run in lockstep with one F16 pass each.

    Every model of a group is loaded at once, so a group's files plus the F16 file stay within
    ``budget_bytes`` where possible (a quant too big for any group still gets its own). One group,
    a single F16 pass, whenever everything fits: always for phone-sized models on a build
    machine.
    """
    groups: list[list[str]] = []
    room = 0
    for name, size in sizes.items():
        if not groups or size > room:
            groups.append([])
            room = budget_bytes - base_bytes
        groups[-1].append(name)
        room -= size
    return groups


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 * 2**30


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

    llama-bench's method (``llama-bench -p <prompt_tokens> -n <gen_tokens> -r <reps>`` with the
    same threads gives the same figures within 10%, tests/test_eval_bench.py): prefill is one
    ``prompt_tokens`` batch into an empty context, decode is ``gen_tokens`` single-token steps
    from an empty context, each after a warm-up, and each figure is the mean tokens/s over
    ``reps``. ``ttft_ms``: the prefill plus the first decode step after it. A child process per
    model makes its peak RSS the model's own (load + run), not the high-water mark of everything
    this process loaded before.
    """
    import subprocess
    import sys

    code = ("import json, sys; from pathlib import Path; from edgetune.evaluate import measure_speed; "
            "print(json.dumps(measure_speed(Path(sys.argv[1]), *map(int, sys.argv[2:]))))")
    run = subprocess.run([sys.executable, "-c", code, str(path), str(prompt_tokens), str(gen_tokens),
                          str(reps)], capture_output=True, text=True)
    if run.returncode != 0:
        tail = " ".join(run.stderr.strip().splitlines()[-2:])
        raise ToolchainError(f"measuring the speed of {path.name} failed: {tail}",
                             hint="check that the GGUF loads with llama.cpp")
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure_speed(path: Path, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    """The measurement itself, following tools/llama-bench/llama-bench.cpp (``test_prompt``,
    ``test_gen``): raw ``llama_decode`` calls, no Python work inside the timed loops."""
    import random

    import llama_cpp

    n_threads = llamacpp.threads()
    # llama-bench's context: batch and micro-batch 512 (its n_batch of 2048 is capped at n_ctx),
    # flash attention on (its "auto" on CPU), the same threads for prompt and generation.
    llm = llama_cpp.Llama(str(path), n_ctx=prompt_tokens + gen_tokens + 1, n_batch=512,
                          n_ubatch=512, flash_attn=True, n_threads=n_threads,
                          n_threads_batch=n_threads, verbose=False)
    try:
        ctx = llm.ctx
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        rng = random.Random(0)
        prompt = [rng.randrange(n_vocab) for _ in range(prompt_tokens)]
        if bos is not None:
            prompt[0] = bos
        prompt_batches = [(llama_cpp.llama_token * len(part))(*part)
                          for part in (prompt[i:i + 512] for i in range(0, prompt_tokens, 512))]
        gen = [(llama_cpp.llama_token * 1)(bos if bos is not None else rng.randrange(n_vocab))]
        gen += [(llama_cpp.llama_token * 1)(rng.randrange(n_vocab)) for _ in range(gen_tokens)]

        def decode(tokens) -> None:
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(tokens)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")

        def clear() -> None:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)

        def prefill(first_token: bool = False) -> float:
            """Seconds for the prompt into an empty context (llama-bench's pp test), or with
            ``first_token`` for the prompt and one decode step after it (time to first token)."""
            clear()
            t0 = time.perf_counter()
            for part in prompt_batches:
                decode(part)
            if first_token:
                decode(gen[1])
            llama_cpp.llama_synchronize(ctx)
            return time.perf_counter() - t0

        def generate(n: int) -> float:
            """Seconds for ``n`` single-token steps from an empty context (llama-bench's tg)."""
            clear()
            t0 = time.perf_counter()
            for token in gen[:n]:
                decode(token)
                llama_cpp.llama_synchronize(ctx)
            return time.perf_counter() - t0

        # llama-bench's order: each test's warm-up (one whole prompt; one generated token) right
        # before its repetitions. A change of batch shape rebuilds the compute graph, which
        # alternating the two tests would pay inside every timed repetition.
        prefill()
        prefills = [prefill() for _ in range(reps)]
        generate(1)
        decodes = [generate(gen_tokens) for _ in range(reps)]
        firsts = [prefill(first_token=True) for _ in range(reps)]
    finally:
        llm.close()
    return {
        "prefill_tps": statistics.mean(prompt_tokens / pp for pp in prefills),
        "decode_tps": statistics.mean(gen_tokens / tg for tg in decodes),
        "ttft_ms": 1000 * statistics.median(firsts),
        "peak_rss_mb": _peak_rss_mb(),
        "threads": n_threads,
    }


def _peak_rss_mb() -> float:
    """This process's own peak resident memory, in MiB.

    Not ``getrusage``'s ``ru_maxrss`` on Linux: exec carries the parent's high-water mark into
    it, so a child of a 2 GB build process reports 2 GB whatever it loads. ``VmHWM`` belongs to
    the address space that exec created.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


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
