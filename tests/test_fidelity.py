"""Quant fidelity in-process, checked figure by figure against the real ``llama-perplexity``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgetune import llamacpp
from edgetune.convert import run_converter
from edgetune.errors import ConfigError, DataError, ModelError
from edgetune.fidelity import Fidelity, compare, compare_many, eval_tokens
from edgetune.quantise import count_fallbacks, quantise_file
from tests.conftest import SAMPLE_TEXTS

QUANTS = ("Q8_0", "Q5_K_M", "Q4_K_M")
N_CTX = 512
# Perplexity samples nothing, so the only thing that could vary between runs is threading:
# pin one thread count for llama-perplexity and for us.
THREADS = llamacpp.threads()
_ATTEMPTS = 10
# ~6.4k tokens: 12 chunks of 512, 3060 scored tokens (llama-perplexity wants 100+ for its stats).
TEXT = "\n\n".join(SAMPLE_TEXTS[:200])


@pytest.fixture(scope="module")
def ggufs(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    """F16 of the tiny llama (256/512 wide: real K-quants, no fallback) and its three quants."""
    out = tmp_path_factory.mktemp("fidelity")
    files = {"F16": out / "Tiny-F16.gguf"}
    run_converter(tiny_model_factory("llama"), files["F16"])
    for quant in QUANTS:
        files[quant] = out / f"Tiny-{quant}.gguf"
        quantise_file(files["F16"], files[quant], quant)
        assert count_fallbacks(files[quant], quant) == 0
    return files


@pytest.fixture(scope="module")
def text_file(ggufs) -> Path:
    path = ggufs["F16"].parent / "eval.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def tokens(ggufs) -> list[int]:
    return eval_tokens(ggufs["F16"], TEXT)


@pytest.fixture(scope="module")
def ours(ggufs, tokens) -> dict[str, Fidelity]:
    """All three quants against one F16 pass, as evaluate() runs them."""
    progress = []
    results = compare_many(ggufs["F16"], {q: ggufs[q] for q in QUANTS}, tokens, n_ctx=N_CTX,
                           threads=THREADS, on_chunk=lambda done, total: progress.append(done))
    assert list(results) == list(QUANTS)
    assert progress == list(range(1, 13))  # one pass over the chunks, not one per quant
    return results


@pytest.fixture(scope="module")
def theirs(ggufs, text_file) -> dict[str, dict]:
    """llama-perplexity's KLD run: save the F16 log-probs, then score each quant against them."""
    base_file = text_file.parent / "f16.kld"
    _llama_perplexity("-m", ggufs["F16"], "-f", text_file, "-c", N_CTX,
                      "--kl-divergence-base", base_file, expect="Final estimate")
    return {q: _parse_kld(_llama_perplexity("-m", ggufs[q], "-f", text_file, "-c", N_CTX,
                                            "--kl-divergence-base", base_file, "--kl-divergence",
                                            expect="Same top p:"))
            for q in QUANTS}


@pytest.mark.parametrize("quant", QUANTS)
def test_figures_match_llama_perplexity(quant, ours, theirs):
    mine, ref = ours[quant], theirs[quant]
    assert mine.chunks == ref["chunks"] == 12
    assert mine.tokens == 12 * (N_CTX - 1 - N_CTX // 2)
    # llama-perplexity prints KLDs with 6 decimals and percentages with 3: Q8_0's mean KLD here is
    # ~1.5e-5, printed "0.000015", so its rounding alone is up to 3%; mean Δp is ~1e-6 and printed
    # "-0.000 %". Where 2% is finer than the printout, one unit of the last printed digit is the
    # tolerance instead.
    _assert_agrees(mine.ppl, ref["ppl"], step=1e-6)
    _assert_agrees(mine.ppl_base, ref["ppl_base"], step=1e-6)
    _assert_agrees(mine.ppl_ratio, ref["ppl_ratio"], step=1e-6)
    _assert_agrees(mine.kld_mean, ref["kld_mean"], step=1e-6)
    _assert_agrees(mine.kld_p99, ref["kld_p99"], step=1e-6)
    _assert_agrees(mine.kld_median, ref["kld_median"], step=1e-6)
    _assert_agrees(mine.top1, ref["top1"], step=1e-5)
    _assert_agrees(mine.delta_p_mean, ref["delta_p_mean"], step=1e-5)
    assert abs(mine.kld_se - ref["kld_se"]) <= 1e-6
    assert abs(mine.delta_p_se - ref["delta_p_se"]) <= 1e-5


def test_f16_perplexity_matches_a_plain_llama_perplexity_run(ggufs, text_file, ours):
    out = _llama_perplexity("-m", ggufs["F16"], "-f", text_file, "-c", N_CTX,
                            expect="Final estimate")
    plain = float(re.search(r"Final estimate: PPL = ([\d.]+)", out).group(1))
    for quant in QUANTS:
        _assert_agrees(ours[quant].ppl_base, plain, step=1e-4)


def test_kld_grows_as_bits_shrink(ours):
    kld = [ours[q].kld_mean for q in QUANTS]
    top1 = [ours[q].top1 for q in QUANTS]
    assert 0 < kld[0] < kld[1] < kld[2]
    assert 1 > top1[0] > top1[1] > top1[2]
    for q in QUANTS:
        assert 0 < ours[q].kld_median <= ours[q].kld_p99
        assert ours[q].ppl_ratio == pytest.approx(ours[q].ppl / ours[q].ppl_base)
        assert set(ours[q].as_dict()) == {f.name for f in Fidelity.__dataclass_fields__.values()}


def test_lockstep_figures_are_those_of_one_quant_at_a_time(ggufs, tokens, ours):
    """Sharing the F16 pass changes nothing: every figure is identical to a separate compare()."""
    for quant in ("Q8_0", "Q4_K_M"):
        alone = compare(ggufs["F16"], ggufs[quant], tokens, n_ctx=N_CTX, threads=THREADS)
        assert alone == ours[quant]
    # The same file twice under two names: two identical results, nothing mixed up.
    twice = compare_many(ggufs["F16"], {"a": ggufs["Q4_K_M"], "b": ggufs["Q4_K_M"]},
                         tokens[:4 * N_CTX], n_ctx=N_CTX, threads=THREADS)
    assert twice["a"] == twice["b"] != compare(ggufs["F16"], ggufs["Q5_K_M"], tokens[:4 * N_CTX],
                                                n_ctx=N_CTX, threads=THREADS)


def test_a_model_against_itself_is_perfect(ggufs, tokens):
    """Also the smallest input accepted: exactly two chunks."""
    progress = []
    same = compare(ggufs["F16"], ggufs["F16"], tokens[:2 * N_CTX], threads=THREADS,
                   on_chunk=lambda done, total: progress.append((done, total)))
    assert (same.chunks, same.tokens) == (2, 2 * (N_CTX - 1 - N_CTX // 2))
    assert progress == [(1, 2), (2, 2)]
    assert same.kld_mean == pytest.approx(0, abs=1e-12)
    assert same.kld_p99 == pytest.approx(0, abs=1e-12)
    assert same.top1 == 1.0
    assert same.ppl_ratio == 1.0
    assert same.delta_p_mean == 0.0


def test_too_few_tokens_is_a_clear_error(ggufs, tokens, tmp_path):
    with pytest.raises(DataError, match="has 1023 tokens; .* needs at least 1024") as err:
        compare(ggufs["F16"], ggufs["Q8_0"], tokens[:2 * N_CTX - 1])
    assert "n_ctx" in err.value.hint
    # llama-perplexity draws the line at the same place (it logs the error and exits 0).
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(SAMPLE_TEXTS[:20]))
    assert len(eval_tokens(ggufs["F16"], short.read_text())) < 2 * N_CTX
    _llama_perplexity("-m", ggufs["F16"], "-f", short, "-c", N_CTX,
                      expect=f"you need at least {2 * N_CTX} tokens")


def test_bad_arguments_are_clear_errors(ggufs, tokens, tmp_path):
    with pytest.raises(ConfigError, match="too small"):
        compare(ggufs["F16"], ggufs["Q8_0"], tokens, n_ctx=2)
    with pytest.raises(ModelError, match="does not exist"):
        compare(ggufs["F16"], tmp_path / "missing.gguf", tokens)
    with pytest.raises(ModelError, match="missing.gguf does not exist"):
        compare_many(ggufs["F16"], {"Q8_0": ggufs["Q8_0"], "gone": tmp_path / "missing.gguf"},
                     tokens)
    with pytest.raises(ConfigError, match="no quant"):
        compare_many(ggufs["F16"], {}, tokens)


def test_bos_replaces_the_first_token_of_every_chunk(ggufs, tmp_path):
    """A vocabulary that adds BOS: llama-perplexity overwrites each chunk's first token with it.

    Also a context other than 512. The tiny llama adds no BOS, so flip the flag in a copy.
    """
    import gguf

    f16 = tmp_path / "Bos-F16.gguf"
    shutil.copyfile(ggufs["F16"], f16)
    reader = gguf.GGUFReader(f16, "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = True
    del reader
    quant = tmp_path / "Bos-Q4_K_M.gguf"
    quantise_file(f16, quant, "Q4_K_M")
    text = tmp_path / "bos.txt"
    text.write_text("\n\n".join(SAMPLE_TEXTS[:60]) + "\n")  # -f drops the trailing newline

    tokens = eval_tokens(f16, text.read_text())
    assert tokens[0] == 1 and 1 not in tokens[1:]
    assert tokens == [1, *eval_tokens(ggufs["F16"], text.read_text())]
    mine = compare(f16, quant, tokens, n_ctx=128, threads=THREADS)

    # -b 128: one chunk per decode, as we do. By default llama-perplexity decodes 2048/n_ctx
    # chunks at once, and below n_ctx 512 that moves its logits in the last bits (quant PPL off
    # by ~1e-4 relative here).
    base_file = tmp_path / "bos.kld"
    _llama_perplexity("-m", f16, "-f", text, "-c", 128, "-b", 128, "--kl-divergence-base",
                      base_file, expect="Final estimate")
    ref = _parse_kld(_llama_perplexity("-m", quant, "-f", text, "-c", 128, "-b", 128,
                                       "--kl-divergence-base", base_file, "--kl-divergence",
                                       expect="Same top p:"))
    assert mine.chunks == ref["chunks"] == len(tokens) // 128
    # The quant's PPL comes from exact log-probs on both sides: it agrees to ~1e-8 when the
    # same tokens go in, so this tight tolerance shows the BOS handling is the same.
    assert mine.ppl == pytest.approx(ref["ppl"], rel=1e-5)
    _assert_agrees(mine.ppl_base, ref["ppl_base"], step=1e-6)
    _assert_agrees(mine.kld_mean, ref["kld_mean"], step=1e-6)
    _assert_agrees(mine.top1, ref["top1"], step=1e-5)
    # ... and it is not what the same tokens give without the BOS substitution.
    plain = compare(ggufs["F16"], ggufs["Q4_K_M"], tokens, n_ctx=128, threads=THREADS)
    assert plain.ppl != pytest.approx(ref["ppl"], rel=1e-4)


def _assert_agrees(mine: float, ref: float, *, step: float) -> None:
    """Within 2% of llama-perplexity's figure, or one unit of the last digit it prints."""
    assert abs(mine - ref) <= max(0.02 * abs(ref), step), f"ours {mine!r}, llama-perplexity {ref!r}"


def _llama_perplexity(*args, expect: str) -> str:
    """Run llama-perplexity with THREADS threads; return its output once it holds ``expect``.

    llama.cpp's tools log through a queue drained by a background thread, and the logger is
    deliberately never shut down (common/log.cpp, ``common_log_main``): whatever is still queued
    when ``main`` returns is lost. On a busy machine that is often the last lines, the very
    statistics we parse. Passive OpenMP threads leave a core to the logger; the figures are
    deterministic, so a run that lost its tail is simply run again.
    """
    binary, env = llamacpp.tool("llama-perplexity")
    env = {**env, "OMP_WAIT_POLICY": "passive"}
    cmd = [str(binary), *map(str, args), "-t", str(THREADS)]
    for _ in range(_ATTEMPTS):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        if expect in out:
            return out
    raise AssertionError(f"llama-perplexity never printed {expect!r} in {_ATTEMPTS} runs:\n"
                         f"{out[-3000:]}")


def _parse_kld(out: str) -> dict:
    def number(pattern: str, group: int = 1) -> float:
        match = re.search(pattern, out)
        assert match, f"no {pattern!r} in llama-perplexity's output:\n{out[-3000:]}"
        return float(match.group(group))

    return {
        "chunks": int(number(r"computing over (\d+) chunks")),
        "ppl": number(r"Mean PPL\(Q\)\s*:\s*([\d.]+)"),
        "ppl_base": number(r"Mean PPL\(base\)\s*:\s*([\d.]+)"),
        "ppl_ratio": number(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)"),
        "kld_mean": number(r"Mean\s+KLD:\s*(-?[\d.]+)"),
        "kld_se": number(r"Mean\s+KLD:\s*-?[\d.]+\s*±\s*([\d.]+)"),
        "kld_p99": number(r"99\.0%\s+KLD:\s*(-?[\d.]+)"),
        "kld_median": number(r"Median\s+KLD:\s*(-?[\d.]+)"),
        "top1": number(r"Same top p:\s*([\d.]+)") / 100,
        "delta_p_mean": number(r"Mean\s+Δp:\s*(-?[\d.]+)") / 100,
        "delta_p_se": number(r"Mean\s+Δp:\s*-?[\d.]+\s*±\s*([\d.]+)") / 100,
    }


def test_evaluate_runs_every_quant_against_one_f16_pass_while_memory_allows():
    from edgetune.evaluate import fidelity_groups

    sizes = {"Q8_0": 8, "Q5_K_M": 5, "Q4_K_M": 4, "without-imatrix/Q4_K_M": 4}
    assert fidelity_groups(16, sizes, 64) == [list(sizes)]
    # Each group's files and the F16 file fit the budget; order is kept.
    assert fidelity_groups(16, sizes, 30) == [["Q8_0", "Q5_K_M"],
                                              ["Q4_K_M", "without-imatrix/Q4_K_M"]]
    # A quant bigger than the budget still runs, on its own.
    assert fidelity_groups(16, {"big": 40, "Q4_K_M": 4}, 30) == [["big"], ["Q4_K_M"]]
    assert fidelity_groups(16, {}, 30) == []
