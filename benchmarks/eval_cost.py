"""What evaluating three quants costs, against llama.cpp's own KLD workflow.

On the same held-out text, the same context (512) and the same threads, times

* ``edgetune``: ``edgetune.fidelity.compare_many`` of Q8_0, Q5_K_M and Q4_K_M against the F16
  GGUF (one F16 pass per chunk, every quant in lockstep), in a fresh Python process: start,
  imports, tokenising, loading the four models and scoring all count;
* ``llama_perplexity``: llama.cpp's workflow, ``llama-perplexity --kl-divergence-base`` once on
  the F16 model, then ``--kl-divergence`` once per quant; the sum of the four runs;
* ``edgetune_per_quant``: the same figures the way edgetune computed them before
  ``compare_many`` (one ``compare`` per quant, so the F16 model runs once per quant);
* ``evaluate``: the whole ``edgetune.evaluate.evaluate`` stage (fidelity + the llama-bench-style
  speed run of each of the four models + file sizes, RAM estimates, gates and the eval.md /
  eval.png views; no task accuracy), for reference only: it is not what the ratio compares.

Each is run ``--repeats`` times in rotating order; the JSON keeps every sample and the medians.
On a shared machine another process can double a timing: every timed run is done in child
processes, and a sample during which the rest of the machine used more than 5% of its CPU time
is thrown away and taken again (after waiting for the machine to go idle), up to 10 times.
Models: ``demo`` is the demo base model (2 layers, 256 wide, 512-token vocabulary; ~1.3 M
parameters), ``wide`` a random llama of 4 layers, 1024 wide, FFN 2816 (~46 M parameters,
``edgetune.tinymodel.WIDE_SPEC``) with the same kind of tokenizer, where compute rather than
start-up dominates. Both have a 512-token vocabulary (see the README for what a real one adds).

    .venv/bin/python benchmarks/eval_cost.py                      # both models, 3 repeats
    .venv/bin/python benchmarks/eval_cost.py --models wide --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUANTS = ("Q8_0", "Q5_K_M", "Q4_K_M")
N_CTX = 512
METHODS = ("edgetune", "llama_perplexity", "edgetune_per_quant", "evaluate")


def prepare(model: str, work: Path) -> dict:
    """F16 + three quants + the eval text for ``model`` under ``work/model`` (reused if there)."""
    from edgetune.convert import run_converter
    from edgetune.data import load_qa, split_qa
    from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
    from edgetune.conversations import conversation, formatted_answer
    from edgetune.demo.model import demo_base_model
    from edgetune.hf import load_tokenizer
    from edgetune.quantise import count_fallbacks, quantise_file
    from edgetune.tinymodel import WIDE_SPEC, build_tiny_model

    out = work / model
    files = {"F16": out / "F16.gguf", **{q: out / f"{q}.gguf" for q in QUANTS}}
    text_file = out / "eval.txt"
    if not all(p.is_file() for p in [*files.values(), text_file]):
        out.mkdir(parents=True, exist_ok=True)
        splits = split_qa(load_qa(DEMO_DATA).rows)
        if model == "demo":
            hf = demo_base_model(cache=work)
        else:
            hf = out / "hf"
            texts = [f"{SYSTEM_PROMPT}\n{r.question}\n{formatted_answer(r)}" for r in splits.train]
            build_tiny_model(hf, texts, WIDE_SPEC)
        tokenizer = load_tokenizer(hf)
        # The held-out rows as the pipeline evaluates them (conversations.conversation_text).
        text_file.write_text("\n\n".join(
            tokenizer.apply_chat_template(conversation(SYSTEM_PROMPT, r), tokenize=False)
            for r in splits.eval))
        run_converter(hf, files["F16"])
        for quant in QUANTS:
            quantise_file(files["F16"], files[quant], quant)
            assert count_fallbacks(files[quant], quant) == 0, (model, quant)
    return {"files": files, "text": text_file}


def time_edgetune(files: dict, text: Path, mode: str) -> tuple[float, dict]:
    """Wall seconds of a fresh process scoring the three quants; its own figures beside."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, __file__, "--worker", mode, str(text),
                          *(str(files[k]) for k in ("F16", *QUANTS))],
                         capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])
    return wall, json.loads(run.stdout.strip().splitlines()[-1])


def time_llama_perplexity(files: dict, text: Path, threads: int) -> tuple[float, list[str]]:
    from edgetune import llamacpp

    binary, env = llamacpp.tool("llama-perplexity")
    base = text.parent / "f16.kld"
    commands = [[str(binary), "-m", str(files["F16"]), "-f", str(text), "-c", str(N_CTX),
                 "-t", str(threads), "--kl-divergence-base", str(base)]]
    commands += [[str(binary), "-m", str(files[q]), "-f", str(text), "-c", str(N_CTX),
                  "-t", str(threads), "--kl-divergence-base", str(base), "--kl-divergence"]
                 for q in QUANTS]
    start = time.perf_counter()
    for cmd in commands:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit((run.stdout + run.stderr)[-3000:])
    wall = time.perf_counter() - start
    base.unlink()
    return wall, [" ".join(Path(c[0]).name if i == 0 else a for i, a in enumerate(c))
                  for c in commands]


def _machine_busy_s() -> float:
    """CPU-seconds spent on anything but idle and iowait since boot, all cores (Linux)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_children_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait_idle(limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = _machine_busy_s()
        time.sleep(2)
        if _machine_busy_s() - before < 0.05 * 2 * (os.cpu_count() or 1):
            return


def timed(run, *args) -> tuple[float, object, float]:
    """``run(*args)`` -> (wall, result), retried while other processes take over 5% of the CPU.
    Returns the wall seconds, the result and the CPU-seconds others used during that sample."""
    for _ in range(10):
        _wait_idle()
        busy, own = _machine_busy_s(), _own_children_s()
        wall, result = run(*args)
        others = (_machine_busy_s() - busy) - (_own_children_s() - own)
        if others <= 0.05 * wall * (os.cpu_count() or 1):
            break
        print(f"  (others used {others:.1f} CPU-s during that {wall:.1f} s sample: again)",
              flush=True)
    return wall, result, max(others, 0.0)


def worker(mode: str, text: Path, paths: list[str]) -> None:
    """Runs in the timed child process."""
    f16, quants = Path(paths[0]), dict(zip(QUANTS, map(Path, paths[1:])))
    start = time.perf_counter()
    if mode == "evaluate":
        import tempfile

        from edgetune.artifacts import GgufModel, QuantizedModels
        from edgetune.evaluate import evaluate
        from edgetune.profiles import QuantProfile

        # Gates are checked but never stop the run: the figures are what is measured.
        profile = QuantProfile(name="eval-cost", description="", quants=QUANTS,
                               context_length=2048, memory_budget_mb=1 << 20, eval_context=N_CTX)
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate(GgufModel(path=f16.parent, file=f16.name),
                              QuantizedModels(path=f16.parent, source_gguf=str(f16),
                                              files={q: p.name for q, p in quants.items()}),
                              profile, [text.read_text()], Path(tmp) / "eval",
                              accept_gate_failure=True)
            metrics = json.loads((report.path / "eval.json").read_text())["quants"]
        kld = {q: metrics[q]["kld_mean"] for q in QUANTS}
    else:
        from edgetune.fidelity import compare, compare_many, eval_tokens

        tokens = eval_tokens(f16, text.read_text())
        if mode == "lockstep":
            results = compare_many(f16, quants, tokens, n_ctx=N_CTX)
        else:
            results = {q: compare(f16, p, tokens, n_ctx=N_CTX) for q, p in quants.items()}
        kld = {q: r.kld_mean for q, r in results.items()}
        kld["tokens"] = len(tokens)
    print(json.dumps({"inner_s": time.perf_counter() - start, "kld_mean": kld}))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    from edgetune import llamacpp

    return {"cpu": cpu, "cores": os.cpu_count(), "threads_used": llamacpp.threads(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                                1),
            "python": platform.python_version(), "llama_cpp_python": llamacpp.runtime_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo,wide", help="comma-separated: demo, wide")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgetune-eval-cost"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/eval_cost.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        return worker(args.worker, Path(rest[0]), rest[1:])

    from edgetune import llamacpp

    threads = llamacpp.threads()
    results = {"command": " ".join([Path(sys.executable).name, "benchmarks/eval_cost.py",
                                    *sys.argv[1:]]),
               "date": datetime.date.today().isoformat(),
               "commit": os.environ.get("EDGETUNE_COMMIT", "unknown"),
               "machine": machine(), "n_ctx": N_CTX, "quants": list(QUANTS), "models": {}}
    for model in args.models.split(","):
        prepared = prepare(model, args.work)
        files, text = prepared["files"], prepared["text"]
        samples: dict[str, list[float]] = {m: [] for m in METHODS}
        figures: dict[str, dict] = {}
        others: list[float] = []
        for rep in range(args.repeats):
            order = METHODS[rep % len(METHODS):] + METHODS[:rep % len(METHODS)]
            for method in order:
                if method == "llama_perplexity":
                    wall, commands, other = timed(time_llama_perplexity, files, text, threads)
                else:
                    mode = {"edgetune": "lockstep", "edgetune_per_quant": "per-quant",
                            "evaluate": "evaluate"}[method]
                    wall, figures[method], other = timed(time_edgetune, files, text, mode)
                samples[method].append(round(wall, 3))
                others.append(other)
                print(f"{model} {method:20s} {wall:7.2f} s", flush=True)
        median = {m: statistics.median(s) for m, s in samples.items()}
        ratio = {m: round(median[m] / median["llama_perplexity"], 3) for m in METHODS}
        results["models"][model] = {
            "f16_bytes": files["F16"].stat().st_size,
            "eval_tokens": figures["edgetune"]["kld_mean"].pop("tokens"),
            "seconds": median,
            "samples_s": samples,
            "ratio_edgetune_vs_llama_perplexity": ratio["edgetune"],
            "ratio_per_quant_vs_llama_perplexity": ratio["edgetune_per_quant"],
            "ratio_evaluate_vs_llama_perplexity": ratio["evaluate"],
            "kld_mean": figures["edgetune"]["kld_mean"],
            "edgetune_inner_s": round(figures["edgetune"]["inner_s"], 3),
            "llama_perplexity_commands": commands,
            "max_cpu_s_used_by_other_processes_per_sample": round(max(others), 2),
        }
        r = results["models"][model]
        print(f"{model}: edgetune {median['edgetune']:.2f} s, llama-perplexity "
              f"{median['llama_perplexity']:.2f} s, ratio {r['ratio_edgetune_vs_llama_perplexity']}"
              f" (per-quant {r['ratio_per_quant_vs_llama_perplexity']}, whole evaluate() "
              f"{median['evaluate']:.2f} s)", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
