"""What evaluating three quants costs, against llama.cpp's own tools on the same files and texts.

On the same two texts (the held-out rows as conversations and the general-English text edgetune
ships), the same context (512) and the same threads, times

* ``llama_tools``: the baseline (issue 18): llama.cpp's KLD workflow on each text,
  ``llama-perplexity --kl-divergence-base`` once on the F16 model then ``--kl-divergence`` once per
  quant, plus ``llama-bench -p 128 -n 32 -r 3`` on each of the four models (the speed figures
  ``evaluate`` measures); the sum of all those runs;
* ``evaluate``: the whole ``edgetune.evaluate.evaluate`` stage without task accuracy (fidelity on
  both texts, every quant in lockstep against one F16 pass; the speed run of each model, best of
  n; file sizes, RAM estimates, gates and the eval.md / eval.png views), in a fresh process:
  start, imports, tokenising and loading count. ``ratio_evaluate``: this over ``llama_tools``
  (issue 18's target: at most 1.5);
* ``evaluate_accuracy``: the same plus task accuracy on 12 held-out questions (generation,
  which llama.cpp's tools do not do at all), reported beside it;
* ``edgetune``: the fidelity part alone (``compare_many`` on both texts), for reference.

The first two are run ``--repeats`` times interleaved (A B, B A, ...), the last two once after
them; the JSON keeps every sample and the medians. On a shared machine another process can double a timing: every timed run
is done in child processes, and a sample during which the rest of the machine used more than 5% of
its CPU time is thrown away and taken again (after waiting for the machine to go idle), up to 10
times. Models: ``real`` is SmolLM2-135M-Instruct (tests/real_model.py: 576-wide rows, so its
K-quants partly fall back; 49k-token vocabulary), ``demo`` the demo base model (~1.3 M
parameters), ``wide`` a random llama of 4 layers, 1024 wide (~46 M parameters,
``edgetune.tinymodel.WIDE_SPEC``); the last two have a 512-token vocabulary.

    .venv/bin/python benchmarks/eval_cost.py                      # real and demo, 3 repeats
    .venv/bin/python benchmarks/eval_cost.py --models real --repeats 2
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
METHODS = ("llama_tools", "evaluate")  # interleaved, --repeats times each
ONCE = ("evaluate_accuracy", "edgetune")  # for reference, one sample each after them
TASK_QUESTIONS = 12  # held-out questions answered in evaluate_accuracy


def prepare(model: str, work: Path) -> dict:
    """F16 + three quants + the two texts for ``model`` under ``work/model`` (reused if there)."""
    from edgetune.convert import run_converter
    from edgetune.conversations import conversation, formatted_answer
    from edgetune.data import load_qa, split_qa
    from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
    from edgetune.demo.model import demo_base_model
    from edgetune.hf import load_tokenizer
    from edgetune.quantise import quantise_file
    from edgetune.resources import general_english
    from edgetune.tinymodel import WIDE_SPEC, build_tiny_model

    out = work / model
    files = {"F16": out / "F16.gguf", **{q: out / f"{q}.gguf" for q in QUANTS}}
    texts = {"held_out": out / "held_out.txt", "general": out / "general.txt"}
    if not all(p.is_file() for p in [*files.values(), *texts.values()]):
        out.mkdir(parents=True, exist_ok=True)
        splits = split_qa(load_qa(DEMO_DATA).rows)
        if model == "demo":
            hf = demo_base_model(cache=work)
        elif model == "real":
            sys.path.insert(0, str(ROOT))
            from tests import real_model

            cache = Path(os.environ.get("EDGETUNE_TEST_CACHE") or "~/.cache/edgetune-tests")
            cache = cache.expanduser()
            hf = real_model.build(cache / "SmolLM2-135M-Instruct", cache)
        else:
            hf = out / "hf"
            train = [f"{SYSTEM_PROMPT}\n{r.question}\n{formatted_answer(r)}" for r in splits.train]
            build_tiny_model(hf, train, WIDE_SPEC)
        tokenizer = load_tokenizer(hf)
        # The held-out rows as the pipeline evaluates them (conversations.conversation_text).
        texts["held_out"].write_text("".join(
            tokenizer.apply_chat_template(conversation(SYSTEM_PROMPT, r), tokenize=False)
            for r in splits.eval))
        texts["general"].write_text(general_english())
        run_converter(hf, files["F16"])
        for quant in QUANTS:
            quantise_file(files["F16"], files[quant], quant)
    return {"files": files, "texts": texts}


def time_edgetune(files: dict, texts: dict, mode: str) -> tuple[float, dict]:
    """Wall seconds of a fresh process running ``mode``; its own figures beside."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, __file__, "--worker", mode, str(texts["held_out"]),
                          *(str(files[k]) for k in ("F16", *QUANTS))],
                         capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])
    return wall, json.loads(run.stdout.strip().splitlines()[-1])


def llama_tools_commands(files: dict, texts: dict, threads: int) -> list[list[str]]:
    """llama-perplexity's KLD workflow on each text, then llama-bench on every model."""
    from edgetune import llamacpp

    perplexity, _ = llamacpp.tool("llama-perplexity")
    bench, _ = llamacpp.tool("llama-bench")
    commands = []
    for name, text in texts.items():
        base = text.parent / f"{name}.kld"
        common = ["-f", str(text), "-c", str(N_CTX), "-t", str(threads),
                  "--kl-divergence-base", str(base)]
        commands.append([str(perplexity), "-m", str(files["F16"]), *common])
        commands += [[str(perplexity), "-m", str(files[q]), *common, "--kl-divergence"]
                     for q in QUANTS]
    commands += [[str(bench), "-m", str(files[m]), "-p", "128", "-n", "32", "-r", "3",
                  "-t", str(threads)] for m in ("F16", *QUANTS)]
    return commands


def time_llama_tools(files: dict, texts: dict, threads: int) -> tuple[float, list[str]]:
    from edgetune import llamacpp

    _, env = llamacpp.tool("llama-perplexity")
    commands = llama_tools_commands(files, texts, threads)
    start = time.perf_counter()
    for cmd in commands:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit((run.stdout + run.stderr)[-3000:])
    wall = time.perf_counter() - start
    for text in texts.values():
        text.with_suffix(".kld").unlink(missing_ok=True)
    return wall, [" ".join([Path(c[0]).name, *c[1:]]) for c in commands]


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


def worker(mode: str, held_out: Path, paths: list[str]) -> None:
    """Runs in the timed child process."""
    f16, quants = Path(paths[0]), dict(zip(QUANTS, map(Path, paths[1:])))
    start = time.perf_counter()
    if mode.startswith("evaluate"):
        import tempfile

        from edgetune.artifacts import GgufModel, QuantizedModels
        from edgetune.data import load_qa, split_qa
        from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
        from edgetune.evaluate import evaluate
        from edgetune.profiles import QuantProfile

        rows = (split_qa(load_qa(DEMO_DATA).rows).eval[:TASK_QUESTIONS]
                if mode == "evaluate_accuracy" else ())
        # Gates are checked but never stop the run: the figures are what is measured.
        profile = QuantProfile(name="eval-cost", description="", quants=QUANTS,
                               context_length=2048, memory_budget_mb=1 << 20, eval_context=N_CTX)
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate(GgufModel(path=f16.parent, file=f16.name),
                              QuantizedModels(path=f16.parent, source_gguf=str(f16),
                                              files={q: p.name for q, p in quants.items()}),
                              profile, [held_out.read_text()], Path(tmp) / "eval",
                              qa_rows=rows, system_prompt=SYSTEM_PROMPT, accept_gate_failure=True)
            data = json.loads((report.path / "eval.json").read_text())
        metrics = data["quants"]
        figures = {"kld_mean": {q: {t: metrics[q]["texts"][t]["kld_mean"]
                                    for t in metrics[q]["texts"]} for q in QUANTS},
                   "fidelity_texts": data["fidelity_texts"],
                   "decode_tps": {q: metrics[q]["decode_tps"] for q in ("F16", *QUANTS)}}
        if rows:
            figures["task_accuracy"] = {q: metrics[q].get("task_accuracy")
                                        for q in ("F16", *QUANTS)}
    else:
        from edgetune.evaluate import fidelity_texts
        from edgetune.fidelity import compare_many

        texts = fidelity_texts(f16, [held_out.read_text()], None, N_CTX)
        figures = {"kld_mean": {name: {q: r.kld_mean for q, r in
                                       compare_many(f16, quants, tokens, n_ctx=N_CTX).items()}
                                for name, tokens in texts.items()},
                   "tokens": {name: len(tokens) for name, tokens in texts.items()}}
    print(json.dumps({"inner_s": time.perf_counter() - start, **figures}))


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
    parser.add_argument("--models", default="real,demo",
                        help="comma-separated: real, demo, wide")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgetune-eval-cost"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/eval_cost.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        return worker(args.worker, Path(rest[0]), rest[1:])  # held-out text, F16, quants

    from edgetune import llamacpp

    threads = llamacpp.threads()
    results = {"command": " ".join([Path(sys.executable).name, "benchmarks/eval_cost.py",
                                    *sys.argv[1:]]),
               "date": datetime.date.today().isoformat(),
               "commit": os.environ.get("EDGETUNE_COMMIT", "unknown"),
               "machine": machine(), "n_ctx": N_CTX, "quants": list(QUANTS), "models": {}}
    for model in args.models.split(","):
        prepared = prepare(model, args.work)
        files, texts = prepared["files"], prepared["texts"]
        samples: dict[str, list[float]] = {m: [] for m in METHODS}
        figures: dict[str, dict] = {}
        others: list[float] = []
        samples.update({m: [] for m in ONCE})
        rounds = [METHODS[rep % len(METHODS):] + METHODS[:rep % len(METHODS)]
                  for rep in range(args.repeats)] + [ONCE]
        for order in rounds:
            for method in order:
                if method == "llama_tools":
                    wall, commands, other = timed(time_llama_tools, files, texts, threads)
                else:
                    mode = "lockstep" if method == "edgetune" else method
                    wall, figures[method], other = timed(time_edgetune, files, texts, mode)
                samples[method].append(round(wall, 3))
                others.append(other)
                print(f"{model} {method:20s} {wall:7.2f} s", flush=True)
        median = {m: statistics.median(s) for m, s in samples.items()}
        ratio = {m: round(median[m] / median["llama_tools"], 3) for m in (*METHODS, *ONCE)}
        results["models"][model] = {
            "f16_bytes": files["F16"].stat().st_size,
            "tokens": figures["edgetune"]["tokens"],
            "seconds": median,
            "samples_s": samples,
            "ratio_evaluate": ratio["evaluate"],
            "ratio_evaluate_accuracy": ratio["evaluate_accuracy"],
            "ratio_fidelity_only": ratio["edgetune"],
            "kld_mean_by_text": figures["edgetune"]["kld_mean"],
            "decode_tps": figures["evaluate"]["decode_tps"],
            "task_accuracy": figures["evaluate_accuracy"].get("task_accuracy"),
            "llama_tools_commands": commands,
            "max_cpu_s_used_by_other_processes_per_sample": round(max(others), 2),
        }
        r = results["models"][model]
        print(f"{model}: llama tools {median['llama_tools']:.2f} s, evaluate "
              f"{median['evaluate']:.2f} s (ratio {r['ratio_evaluate']}), with task accuracy "
              f"{median['evaluate_accuracy']:.2f} s (ratio {r['ratio_evaluate_accuracy']})",
              flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
