"""edgetune.speed against the real ``llama-bench`` on the same GGUF, threads and test sizes, and
beside other jobs on the machine."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetune import llamacpp
from edgetune.convert import run_converter
from edgetune.gates import CANNOT_JUDGE, gate_report
from edgetune.profiles import load_profile
from edgetune.quantise import count_fallbacks, quantise_file
from edgetune.speed import BUSY_CPU_SHARE, cores, speed
from edgetune.tinymodel import WIDE_SPEC, build_tiny_model
from tests.conftest import SAMPLE_TEXTS

# llama-bench -p 128 -n 64 -r 5. Even llama-bench disagrees with itself by up to 30% from one
# run to the next on this model's F16 decode at -n 32 -r 3 (memory-bound, ~90 MB per token), so
# each side runs three times, interleaved, and the medians are compared.
PROMPT, GEN, REPS, PAIRS = 128, 64, 5, 3
THREADS = llamacpp.threads()
# A 2-core machine shares its cores with whatever else runs, and with one core taken llama.cpp's
# spinning thread barriers can slow either side of a comparison 10-100x. An attempt counts
# against us only when the rest of the machine stayed under 5% of its CPU meanwhile; two such
# attempts that disagree fail the test. A machine busy for 30 s of attempts skips it.
_CLEAN_FAILURES, _PATIENCE_S = 2, 30
# A timing comparison: on CI's shared 2-core machine it flaked (decode 0.87-0.90 of llama-bench
# in one fresh-clone run, 0.98-1.03 when idle). Run it on purpose: EDGETUNE_TIMING_TESTS=1.
timing = pytest.mark.skipif(not os.environ.get("EDGETUNE_TIMING_TESTS"),
                            reason="timing comparison; set EDGETUNE_TIMING_TESTS=1")


@pytest.fixture(scope="module")
def wide_ggufs(tmp_path_factory) -> dict[str, Path]:
    """A ~46 M-parameter llama (F16 ~91 MB): tens of milliseconds per test, not noise."""
    out = tmp_path_factory.mktemp("speed")
    build_tiny_model(out / "hf", SAMPLE_TEXTS, WIDE_SPEC)
    files = {"F16": out / "Wide-F16.gguf", "Q4_K_M": out / "Wide-Q4_K_M.gguf"}
    run_converter(out / "hf", files["F16"])
    quantise_file(files["F16"], files["Q4_K_M"], "Q4_K_M")
    assert count_fallbacks(files["Q4_K_M"], "Q4_K_M") == 0
    return files


@timing
@pytest.mark.parametrize("quant", ["F16", "Q4_K_M"])
def test_speed_agrees_with_llama_bench(wide_ggufs, quant):
    path = wide_ggufs[quant]
    attempts = []
    deadline = time.monotonic() + _PATIENCE_S
    while time.monotonic() < deadline:
        busy, own = _machine_busy_s(), _children_cpu_s()
        start = time.monotonic()
        runs, bench = [], []
        for _ in range(PAIRS):
            runs.append(speed(path, prompt_tokens=PROMPT, gen_tokens=GEN, reps=REPS))
            bench.append(_llama_bench(path))
        others = (_machine_busy_s() - busy) - (_children_cpu_s() - own)
        clean = others <= 0.05 * (time.monotonic() - start) * (os.cpu_count() or 1)
        ours = runs[-1]
        pp, tg = (statistics.median(b[i] for b in bench) for i in (0, 1))
        ratios = {"prefill": statistics.median(r["prefill_tps"] for r in runs) / pp,
                  "decode": statistics.median(r["decode_tps"] for r in runs) / tg}
        attempts.append({"ratios": ratios, "undisturbed": clean, "ours": runs,
                         "llama-bench pp/tg": bench})
        if all(abs(r - 1) <= 0.10 for r in ratios.values()):
            break
        if sum(a["undisturbed"] for a in attempts) >= _CLEAN_FAILURES:
            pytest.fail(f"speed() and llama-bench disagree by more than 10%: {attempts}")
    else:
        pytest.skip(f"other processes kept the machine busy through {len(attempts)} attempts "
                    f"({_PATIENCE_S} s): {[a['ratios'] for a in attempts]}")
    assert ours["threads"] == THREADS
    # Time to first token: the prompt, then one decode step (median of REPS, so only roughly
    # the sum of the two means; timed separately, so only comparable when nothing interfered).
    prompt_ms = 1000 * PROMPT / ours["prefill_tps"]
    step_ms = 1000 / ours["decode_tps"]
    assert ours["ttft_ms"] > 0
    if attempts[-1]["undisturbed"]:
        assert 0.5 * prompt_ms < ours["ttft_ms"] < 2 * (prompt_ms + step_ms)
    # The child's own peak: the mapped model file plus a Python interpreter, nothing more.
    size_mib = path.stat().st_size / 2**20
    assert 0.9 * size_mib < ours["peak_rss_mb"] < size_mib + 256


@timing
def test_peak_rss_is_the_childs_own_not_the_callers(wide_ggufs):
    """A big caller (a build process holds torch and a model) must not leak into the figure:
    exec carries the parent's high-water mark into getrusage's ru_maxrss on Linux."""
    ballast = b"\1" * (768 * 2**20)  # written, so resident
    peak = speed(wide_ggufs["Q4_K_M"], prompt_tokens=16, gen_tokens=4, reps=1)["peak_rss_mb"]
    assert len(ballast) and peak < 512


def test_speed_of_a_broken_file_is_a_toolchain_error(tmp_path):
    from edgetune.errors import ToolchainError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ToolchainError, match="measuring the speed of bad.gguf failed"):
        speed(bad)


def test_a_concurrent_cpu_load_cannot_fail_a_quant(tiny_model_factory, tmp_path):
    """Issue 18: on a 2-core CI machine Q4_K_M decoded at 4.4 tok/s while another job ran, and
    failed the phone floor that F16, measured quiet, would have passed. With busy loops on every
    core, speed() must see the load, and the gate must say it cannot judge instead of failing."""
    files = {"F16": tmp_path / "F16.gguf", "Q4_K_M": tmp_path / "Q4_K_M.gguf"}
    run_converter(tiny_model_factory("llama"), files["F16"])
    quantise_file(files["F16"], files["Q4_K_M"], "Q4_K_M")
    # Twice as many busy processes as cores: our threads can get at most a third of the CPU
    # time they ask for (2 threads + 4 loops on 2 cores; 8 + 32 on 16).
    with _busy_loops(2 * cores()):
        quants = {q: speed(path, prompt_tokens=16, gen_tokens=8, reps=2)
                  for q, path in files.items()}
    for m in quants.values():
        assert m["machine_busy"] is True, m
        assert m["decode_cpu_share"] < BUSY_CPU_SHARE and m["cores"] == cores()
    # Any floor above the figure measured under load failed the quant before.
    profile = dataclasses.replace(load_profile("phone"),
                                  min_decode_tps=2 * quants["Q4_K_M"]["decode_tps"])
    verdict = gate_report(quants, profile)["Q4_K_M"]
    assert verdict.passed, verdict.reasons
    floor = verdict.checks["decode_tps"]
    assert floor["why"] == CANNOT_JUDGE and floor["value"] < floor["limit"]
    assert floor["detail"].startswith("cannot judge decode speed: the machine was busy (load ")
    assert f" on {cores()} cores; decode got " in floor["detail"]


@contextlib.contextmanager
def _busy_loops(n: int):
    """``n`` processes spinning on the CPU, as other jobs on a shared build machine do."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # running before the measurement starts
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy since boot (Linux's /proc/stat; elsewhere 0,
    so every attempt counts)."""
    if not Path("/proc/stat").is_file():
        return 0.0
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _llama_bench(path: Path) -> tuple[float, float]:
    """llama-bench's mean prompt and generation tokens/s (its defaults otherwise: -fa auto,
    -b 2048 capped at the context, -ub 512)."""
    binary, env = llamacpp.tool("llama-bench")
    proc = subprocess.run([str(binary), "-m", str(path), "-t", str(THREADS), "-p", str(PROMPT),
                           "-n", str(GEN), "-r", str(REPS), "-o", "json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tests = json.loads(proc.stdout)
    pp = next(t for t in tests if t["n_prompt"] == PROMPT and t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_gen"] == GEN and t["n_prompt"] == 0)
    assert pp["n_threads"] == tg["n_threads"] == THREADS
    return pp["avg_ts"], tg["avg_ts"]
