"""benchmarks/grpo_gpu.py without a GPU: interleaved rounds and their time budget, the statistics
and ratios, the results file, the worker pipe and step timers, and the model that stops at EOS.
The GPU run itself is the lead's (benchmarks/README.md); the CPU smoke run is marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from eos_model import completion_lengths, length_stats, raise_eos_logit  # noqa: E402
from grpo_rounds import (Channel, RoundBudget, commit_info, parse_variant,  # noqa: E402
                         record_invocation, summarise)
from grpo_worker import Timers  # noqa: E402


def test_variant_specs_name_their_scenario():
    assert parse_variant("trl-compiled@eos") == ("trl-compiled", "eos")
    assert parse_variant("trl") == ("trl", "cap")
    with pytest.raises(ValueError, match="unknown scenario"):
        parse_variant("trl@short")


def test_budget_refuses_a_round_that_would_not_fit():
    budget = RoundBudget(100, started=1000.0)
    assert budget.fits(1000.0, None)  # nothing measured yet: the first round starts
    assert budget.fits(1050.0, 40.0)  # 1050 + 44 <= 1100
    assert not budget.fits(1060.0, 40.0)  # 1060 + 44 > 1100
    assert not budget.fits(1100.0, None)
    assert budget.remaining(1090.0) == 10.0
    unlimited = RoundBudget(None, started=0.0)
    assert unlimited.fits(1e9, 1e9) and unlimited.remaining(5.0) is None


def _run(variant, round_no, times, *, scenario="cap", per_step=16, gen=None, lengths=None):
    steps = [{"step_s": t, "generate_s": (gen or t * 0.75), "decode_steps": 256,
              "backward_s": 0.1, "optimizer_s": 0.05, "generate_calls": 1,
              "completion_lengths": lengths or [256] * per_step} for t in times]
    return {"model": "1.5B", "variant": variant, "scenario": scenario, "round": round_no,
            "step_times_s": list(times), "completions_per_step": per_step,
            "peak_allocated_gib": 3.7 + round_no / 100, "steps": steps}


def test_ratios_come_from_interleaved_rounds_and_unsteady_figures_are_flagged():
    runs = []
    for r in (1, 2, 3):
        runs.append(_run("trl", r, [10.0, 10.1]))
        runs.append(_run("trl-compiled", r, [2.0, 2.02] if r != 2 else [2.4, 2.42]))
    rows = {(x["scenario"], x["variant"]): x for x in summarise(runs, baseline="trl",
                                                               default_variant="trl-compiled",
                                                               new_tokens=256)}
    base, cand = rows[("cap", "trl")], rows[("cap", "trl-compiled")]
    assert base["rounds"] == 3 and base["measured_steps"] == 6
    assert base["completions_per_s"] == round(16 / 10.05, 3)
    assert base["spread_ok"] and base["spread_over_steps"] == round(0.1 / 10.05, 3)
    assert cand["completions_per_s"] == round(16 / 2.02, 3)  # median of 6 pooled steps
    # Round 2 was 20% slower: quoting it would mislead.
    assert not cand["spread_ok"] and "spread over rounds" in cand["spread_note"]
    ratio = cand["vs_baseline"]
    assert ratio["ratio_of_medians"] == round((16 / 2.02) / (16 / 10.05), 3)
    assert ratio["ratio_by_round"] == [round(10.05 / 2.01, 3), round(10.05 / 2.41, 3),
                                       round(10.05 / 2.01, 3)]
    assert not ratio["quotable"] and cand["is_default"] and base["is_baseline"]
    assert cand["peak_allocated_gib"] == 3.73
    brk = cand["step_breakdown"]
    assert brk["decode_steps_per_step"] == 256
    assert brk["ms_per_decode_step"] == round(1000 * 0.75 * 2.02 / 256, 2)
    assert brk["other_s"] == round(2.02 - 0.75 * 2.02 - 0.15, 3)


def test_no_ratio_across_scenarios_or_from_one_round():
    runs = [_run("trl", 1, [10.0, 10.0]),
            _run("trl-compiled", 1, [2.0, 2.0], scenario="eos", lengths=[40, 120, 256, 7]),
            {"model": "1.5B", "variant": "trl-compiled", "scenario": "eos", "round": 2,
             "error": "worker exited (1)"}]
    rows = {(x["scenario"], x["variant"]): x for x in summarise(runs, baseline="trl", new_tokens=256)}
    eos = rows[("eos", "trl-compiled")]
    assert "vs_baseline" not in eos  # the baseline ran only at the cap
    assert eos["rounds"] == 1 and eos["failed_rounds"] == 1
    assert not eos["spread_ok"] and "fewer than 2 rounds" in eos["spread_note"]
    lengths = eos["completion_lengths"]
    assert (lengths["median"], lengths["max"], lengths["share_at_cap"]) == (80.0, 256, 0.25)
    assert not rows[("cap", "trl")]["spread_ok"]


def test_completion_lengths_stop_at_the_first_eos():
    import torch

    ids = torch.tensor([[5, 9, 3, 9], [3, 3, 3, 3], [5, 5, 5, 5]])
    assert completion_lengths(ids, [9]) == [2, 4, 4]
    assert completion_lengths(ids, [3, 9]) == [2, 1, 4]
    stats = length_stats([1, 2, 3, 4, 10], cap=10)
    assert (stats["median"], stats["p90"], stats["p10"], stats["share_at_cap"]) == (3, 10, 1, 0.2)


def test_results_file_keeps_other_invocations_and_old_runs(tmp_path):
    out = tmp_path / "grpo_gpu.json"
    out.write_text(json.dumps([{"model": "1.5B", "variant": "trl"}]))  # the old flat format
    record_invocation(out, {"id": "a", "runs": [1]})
    record_invocation(out, {"id": "b", "runs": []})
    record_invocation(out, {"id": "a", "runs": [1, 2]})  # the same invocation, one run later
    data = json.loads(out.read_text())
    assert data["legacy_runs"] == [{"model": "1.5B", "variant": "trl"}]
    assert [(i["id"], i["runs"]) for i in data["invocations"]] == [("b", []), ("a", [1, 2])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grpo_gpu.json"]  # no temp file left


def test_commit_comes_from_git_or_from_the_caller(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    if head:
        info = commit_info(ROOT, None)
        assert (info["commit"], info["commit_source"], info["git_head"]) == (head, "git", head)
    copied = commit_info(tmp_path, "abc1234")  # a tree copied without .git
    assert (copied["commit"], copied["commit_source"]) == ("abc1234", "argument")
    assert "git_head" not in copied
    assert commit_info(tmp_path, None)["commit"] is None


def test_channel_carries_messages_and_notices_a_closed_end():
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    parent, child = Channel(a_read, a_write), Channel(b_read, b_write)
    child.send({"event": "ready", "n": 1})
    child.send({"event": "round", "n": 2})
    assert parent.recv(5) == {"event": "ready", "n": 1}
    assert parent.recv(5) == {"event": "round", "n": 2}
    with pytest.raises(TimeoutError):
        parent.recv(0.05)
    child.close()
    assert parent.recv(5) is None
    parent.close()


class _Decoder:
    """Something with a generate() that calls itself once more inside (as wrappers do)."""

    def generate(self, again=True):
        time.sleep(0.02)
        return self.generate(again=False) if again else None


def test_timers_attribute_spans_to_the_step_they_began_in():
    timers = Timers(cuda=False, eos_ids=[9])
    original = _Decoder.generate
    timers.wrap(_Decoder, "generate", "generate")
    try:
        start = time.perf_counter()
        _Decoder().generate()
        mid = time.perf_counter()
        _Decoder().generate()
        end = time.perf_counter()
    finally:
        _Decoder.generate = original
    first = timers.step(start, mid)
    assert first["generate_calls"] == 1  # the nested call is inside the outer span, not extra
    assert 0.035 <= first["generate_s"] <= first["step_s"]
    assert timers.step(mid, end)["generate_calls"] == 1
    assert timers.events == []


def _tiny_qwen(vocab=4096):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=3, pad_token_id=2)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: more threads only spin (55 s against 1.8 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_raised_eos_logit_gives_a_wide_spread_of_lengths_around_the_target(one_thread):
    import torch

    model = _tiny_qwen()
    prompt = torch.tensor([[1, 10, 11, 12, 3, 1, 13]])
    before = model.get_output_embeddings().weight.detach().clone()
    torch.manual_seed(5)
    plain = model.generate(prompt.expand(32, -1), attention_mask=torch.ones(32, 7, dtype=torch.long),
                           do_sample=True, top_k=0, max_new_tokens=64, eos_token_id=3, pad_token_id=2)
    assert sorted(completion_lengths(plain[:, 7:], [3]))[16] == 64  # random weights: no EOS

    result = raise_eos_logit(model, prompt, 3, 2, median_tokens=24, new_tokens=64)
    after = model.get_output_embeddings().weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3]  # only the EOS row: every other logit is as it was
    assert result["tied_embeddings"] and result["beta"] > 0
    assert abs(result["implied_median_tokens"] - 24) <= 2
    lengths = result["checked_lengths"]
    assert lengths["n"] == 64 and 12 <= lengths["median"] <= 40
    assert lengths["p10"] <= 8 and lengths["p90"] >= 56  # a wide spread, not one length


@pytest.mark.slow
def test_cpu_smoke_run_writes_interleaved_rounds(tmp_path):
    """The whole script on the CPU (tiny model, 4 completions x 16 tokens): two variants in
    two scenarios, two rounds, each variant in its own process."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "grpo_gpu.py"), "--models", "tiny",
           "--variants", "trl", "--eos", "--rounds", "2", "--steps", "1", "--warmup", "1",
           "--generations", "4", "--new-tokens", "16", "--eos-median", "5", "--out", str(out),
           "--model-cache", str(tmp_path / "models"), "--commit", "test"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    inv = json.loads(out.read_text())["invocations"][-1]
    assert inv["complete"] and inv["same_machine"] and inv["commit"]["commit"] == "test"
    order = [(r["round"], r["spec"]) for r in inv["runs"]]
    assert order == [(1, "trl"), (1, "trl@eos"), (2, "trl"), (2, "trl@eos")]
    rows = {x["scenario"]: x for x in inv["summary"]}
    assert rows["cap"]["rounds"] == 2 and rows["eos"]["rounds"] == 2
    assert rows["cap"]["completion_lengths"]["median"] == 16
    assert rows["eos"]["completion_lengths"]["share_at_cap"] < 1  # some stopped at EOS
    assert rows["cap"]["step_breakdown"]["decode_steps_per_step"] == 16
    assert inv["eos_models"]["tiny"]["checked_lengths"]["median"] < 16
