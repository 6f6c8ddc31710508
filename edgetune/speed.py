"""Speed: prefill/decode tokens/s, time to first token and peak RSS of one GGUF, measured the
way llama-bench measures them, together with how busy the machine was meanwhile.

A speed figure on a shared build machine follows the other jobs on it: on a 2-core machine one
busy process next to llama.cpp's spinning thread barriers slows decode 10-100x, at times 500x
(Q4_K_M of a 46 M-parameter llama: 580 tok/s alone, 4-38 tok/s beside one busy loop). So every
figure is the best of ``reps`` repetitions, not their mean (a repetition can only be slowed by
others, never sped up), and each repetition records the share of the CPU time its threads asked
for that they got (process CPU time / (wall time x threads)): 0.9-1.0 alone, 0.2-0.75 beside
other work. The gates (``edgetune.gates``) do not fail a quant on a figure measured while the
machine was busy.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edgetune import llamacpp
from edgetune.errors import ToolchainError

# Below this share of its threads' CPU time, a decode repetition was slowed by other work. Alone
# on a 2-core machine the best repetition gets 0.9-1.0 (0.82-0.93 for a 3 MB model whose decode
# step is mostly Python overhead); beside one busy loop 0.2-0.75, beside two or four 0.15-0.6.
BUSY_CPU_SHARE = 0.8
# Each test stops repeating once its repetitions have taken this long (at least one runs), and a
# decode repetition stops generating: beside other work they can take 10-500x longer, and more
# of them then buy little. Alone, a 1.5B Q4_K_M at 20 tok/s decodes 32 tokens in 1.6 s: all 5
# repetitions fit.
REPS_BUDGET_S = 10.0
# A test stops after this many repetitions when the fastest two agree within SETTLED and the
# fastest was quiet: more would find nothing faster (alone, a 135M model's repetitions agree
# within 1-2%), and the speed part then costs what three repetitions did before.
MIN_REPS, SETTLED = 3, 0.03
# The figures a quant's gate compares with F16's (``gates.decode_checks``).
SPEED_KEYS = ("decode_tps", "machine_busy", "load_avg", "cores", "decode_cpu_share")


def speed(path: Path, *, prompt_tokens: int = 128, gen_tokens: int = 32, reps: int = 5) -> dict:
    """Prefill/decode tokens/s, time to first token and peak RSS, measured in a fresh process,
    with the load the measurement saw (``cores``, ``load_avg``, ``decode_cpu_share``,
    ``machine_busy``).

    llama-bench's method (``llama-bench -p <prompt_tokens> -n <gen_tokens>`` with the same
    threads gives the same figures within 10%, tests/test_eval_bench.py): prefill is one
    ``prompt_tokens`` batch into an empty context, decode is ``gen_tokens`` single-token steps
    from an empty context, each after a warm-up; each figure is the best of ``reps``
    (llama-bench reports the mean, which one disturbed repetition drags down), fewer when they
    have ``settled`` or taken ``REPS_BUDGET_S`` (``speed_reps``: the decode repetitions run).
    ``ttft_ms``: the prefill plus the first decode step after it. A child process per model
    makes its peak RSS the model's own (load + run), not the high-water mark of everything this
    process loaded before.

    ``load_avg`` is the 1-minute load average, the higher of before and after: for people to
    read, not the verdict, as it lags a minute and counts this build's own earlier stages.
    ``machine_busy``: the fastest decode repetition got less than ``BUSY_CPU_SHARE`` of its
    threads' CPU time.
    """
    import subprocess
    import sys

    before = load_average()
    code = ("import json, sys; from pathlib import Path; from edgetune.speed import measure_speed; "
            "print(json.dumps(measure_speed(Path(sys.argv[1]), *map(int, sys.argv[2:]))))")
    run = subprocess.run([sys.executable, "-c", code, str(path), str(prompt_tokens), str(gen_tokens),
                          str(reps)], capture_output=True, text=True)
    if run.returncode != 0:
        tail = " ".join(run.stderr.strip().splitlines()[-2:])
        raise ToolchainError(f"measuring the speed of {path.name} failed: {tail}",
                             hint="check that the GGUF loads with llama.cpp")
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    loads = [x for x in (before, metrics.get("load_avg")) if x is not None]
    metrics["load_avg"] = max(loads) if loads else None
    return metrics


def measure_speed(path: Path, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    """The measurement itself, following tools/llama-bench/llama-bench.cpp (``test_prompt``,
    ``test_gen``): raw ``llama_decode`` calls, no Python work inside the timed loops but a
    clock read per decode step."""
    import random

    import llama_cpp

    n_threads = llamacpp.threads()
    # The CPU seconds per second our threads can get at most: fewer than the threads where this
    # process may run on fewer cores (a container's or taskset's share).
    parallel = min(n_threads, cores())
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

        def timed(work) -> tuple[float, float]:
            """(wall seconds, share of its threads' CPU time) of ``work`` in an empty context.
            The process's CPU time counts every llama.cpp thread; a thread waiting for a core
            that another job holds adds wall time but no CPU time."""
            clear()
            cpu, t0 = time.process_time(), time.perf_counter()
            work()
            llama_cpp.llama_synchronize(ctx)
            wall = time.perf_counter() - t0
            return wall, (time.process_time() - cpu) / (wall * parallel)

        def prefill(first_token: bool = False) -> tuple[float, float]:
            """The prompt into an empty context (llama-bench's pp test), or with
            ``first_token`` the prompt and one decode step after it (time to first token)."""
            def work() -> None:
                for part in prompt_batches:
                    decode(part)
                if first_token:
                    decode(gen[1])
            return timed(work)

        def generate(n: int) -> tuple[float, float]:
            """(seconds per token, CPU share) of ``n`` single-token steps from an empty context
            (llama-bench's tg), fewer once they take ``REPS_BUDGET_S``: beside other jobs one
            step of a 135M model took 3-5 s on a 2-core machine."""
            done = 0

            def work() -> None:
                nonlocal done
                start = time.perf_counter()
                for token in gen[:n]:
                    decode(token)
                    llama_cpp.llama_synchronize(ctx)
                    done += 1
                    if time.perf_counter() - start > REPS_BUDGET_S:
                        break
            wall, share = timed(work)
            return wall / done, share

        def repeat(test) -> list[tuple[float, float]]:
            runs, start = [], time.perf_counter()
            while len(runs) < reps and (not runs or time.perf_counter() - start < REPS_BUDGET_S):
                runs.append(test())
                if settled(runs):
                    break
            return runs

        # llama-bench's order: each test's warm-up (one whole prompt; one generated token) right
        # before its repetitions. A change of batch shape rebuilds the compute graph, which
        # alternating the two tests would pay inside every timed repetition.
        prefill()
        prefills = repeat(prefill)
        generate(1)
        decodes = repeat(lambda: generate(gen_tokens))
        firsts = repeat(lambda: prefill(first_token=True))
    finally:
        llm.close()
    step_s, decode_share = min(decodes)  # the fastest repetition and the CPU share it got
    return {
        "prefill_tps": prompt_tokens / min(prefills)[0],
        "decode_tps": 1 / step_s,
        "ttft_ms": 1000 * min(firsts)[0],
        "peak_rss_mb": _peak_rss_mb(),
        "threads": n_threads,
        "speed_reps": len(decodes),
        "cores": cores(),
        "load_avg": load_average(),
        "decode_cpu_share": round(decode_share, 3),
        "machine_busy": decode_share < BUSY_CPU_SHARE,
    }


def settled(runs: list[tuple[float, float]]) -> bool:
    """Whether repetitions ``(seconds, CPU share)`` already show the speed: ``MIN_REPS`` of them,
    the fastest quiet and the next within ``SETTLED`` of it."""
    if len(runs) < MIN_REPS:
        return False
    (best, share), (second, _) = sorted(runs)[:2]
    return share >= BUSY_CPU_SHARE and second <= best * (1 + SETTLED)


def busy_note(metrics: dict, measuring: str = "") -> str:
    """``the machine was busy (load 3.9 on 2 cores; ...)``: why a speed figure measured beside
    other work says nothing about the model, in the words the gates and the report use."""
    load, n = metrics.get("load_avg"), metrics.get("cores")
    share = metrics.get("decode_cpu_share")
    where = f"load {load:.1f}" if load is not None else "load unknown"
    where += f" on {n} cores" if n else ""
    got = f"; decode got {share:.0%} of its threads' CPU time" if share is not None else ""
    during = f" while {measuring} was measured" if measuring else ""
    return f"the machine was busy{during} ({where}{got})"


def cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


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
