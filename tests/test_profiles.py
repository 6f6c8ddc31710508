"""Device profiles (quant_profiles/*.yaml) and the per-quant gates built on them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune.cli import cli
from edgetune.errors import ConfigError, EdgetuneError
from edgetune.gates import (GateFailure, GateResult, check_gates, failures_table_rows, gate_quant,
                            gate_report)
from edgetune.profiles import (DEFAULT_MIN_DECODE_RATIO, DEFAULT_THRESHOLDS, MIB, PROFILES_DIR,
                               QuantProfile, QuantThresholds, available_profiles, load_profile,
                               parse_profile, pocketpal_usable_ram_mib)
from edgetune.llamacpp import QUANT_TYPES

SHIPPED = sorted(PROFILES_DIR.glob("*.yaml"))

# name: (quants, context, budget MiB, RAM GB, decode floor)
EXPECTED = {
    "desktop": (("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"), 8192, 9155, 16.0, 10.0),
    "phone": (("Q4_K_M", "Q4_K_X", "Q5_K_M", "Q8_0"), 2048, 3433, 6.0, 20.0),
    "phone-4gb": (("Q4_K_M", "Q4_K_X", "Q4_0"), 2048, 2288, 4.0, 30.0),
    "phone-6gb": (("Q4_K_M", "Q4_K_X", "Q5_K_M", "Q8_0"), 2048, 3433, 6.0, 20.0),
    "phone-8gb": (("Q4_K_M", "Q4_K_X", "Q5_K_M", "Q8_0"), 4096, 4577, 8.0, 12.0),
    "tablet": (("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"), 4096, 4577, 8.0, 10.0),
}


# --------------------------------------------------------------------------- shipped profiles

def test_available_profiles():
    assert available_profiles() == ["desktop", "phone", "phone-4gb", "phone-6gb", "phone-8gb",
                                    "tablet"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profile_loads_and_validates(path: Path):
    by_name = load_profile(path.stem)
    assert load_profile(str(path)) == by_name
    assert by_name.name == path.stem
    assert by_name.description.strip()
    assert set(by_name.quants) <= set(QUANT_TYPES) and "F16" not in by_name.quants
    assert set(by_name.imatrix_quants) <= set(QUANT_TYPES)
    assert set(by_name.thresholds) == set(QUANT_TYPES)
    assert by_name.eval_context == 512
    assert by_name.eval_context <= by_name.context_length
    quants, ctx, budget, ram_gb, floor = EXPECTED[path.stem]
    assert (by_name.quants, by_name.context_length, by_name.memory_budget_mb, by_name.ram_gb,
            by_name.min_decode_tps) == (quants, ctx, budget, ram_gb, floor)
    # Every shipped profile states the ratio to F16 it holds decode to (the default, for now).
    assert "\nmin_decode_ratio: " in path.read_text()
    assert by_name.min_decode_ratio == DEFAULT_MIN_DECODE_RATIO


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_memory_budget_is_pocketpal_usable_ram(path: Path):
    profile = load_profile(path.stem)
    total = profile.ram_gb * 1e9  # a device sold as N GB, as its OS reports it (about N * 1e9 bytes)
    assert profile.memory_budget_mb == int(min(0.6 * total, total - 1.2e9) // MIB)
    assert profile.memory_budget_mb == pocketpal_usable_ram_mib(profile.ram_gb)


def test_pocketpal_usable_ram_values():
    assert [pocketpal_usable_ram_mib(gb) for gb in (2, 3, 4, 6, 8, 12, 16)] == [
        762, 1716, 2288, 3433, 4577, 6866, 9155]
    assert pocketpal_usable_ram_mib(1) == 0  # 1 GB - 1.2 GB: nothing usable, never negative


def test_phone_is_the_6gb_phone():
    phone, phone_6gb = load_profile("phone"), load_profile("phone-6gb")
    assert dataclasses.replace(phone, name="phone-6gb") == phone_6gb
    # What the README's `edgetune build --target phone` (and the pipeline tests) rely on.
    assert phone.quants == ("Q4_K_M", "Q4_K_X", "Q5_K_M", "Q8_0")
    assert phone.mix_types == ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
    assert phone.mix_budget == "Q4_K_M"
    assert phone.context_length == 2048 and phone.eval_context == 512


def test_shipped_threshold_overrides():
    four = load_profile("phone-4gb")
    assert four.thresholds["Q4_0"] == QuantThresholds(max_kld_mean=0.20, min_top1=0.78,
                                                      max_ppl_ratio=1.20, max_accuracy_drop=0.05)
    assert {q: t for q, t in four.thresholds.items() if q != "Q4_0"} == {
        q: t for q, t in DEFAULT_THRESHOLDS.items() if q != "Q4_0"}
    for name in ("desktop", "phone", "phone-6gb", "phone-8gb", "tablet"):
        assert load_profile(name).thresholds == DEFAULT_THRESHOLDS, name


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS == {
        "Q8_0": QuantThresholds(0.01, 0.95, 1.01, 0.05),
        "Q6_K": QuantThresholds(0.02, 0.93, 1.02, 0.05),
        "Q5_K_M": QuantThresholds(0.05, 0.90, 1.05, 0.05),
        "Q4_K_M": QuantThresholds(0.10, 0.85, 1.10, 0.05),
        "Q4_K_X": QuantThresholds(0.10, 0.85, 1.10, 0.05),  # the measured mix: Q4_K_M's limits
        "Q4_0": QuantThresholds(0.15, 0.80, 1.15, 0.05),
    }
    # Each limit is looser than the one of the next bigger quant.
    order = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"]
    for bigger, smaller in zip(order, order[1:]):
        b, s = DEFAULT_THRESHOLDS[bigger], DEFAULT_THRESHOLDS[smaller]
        assert s.max_kld_mean > b.max_kld_mean and s.min_top1 < b.min_top1
        assert s.max_ppl_ratio > b.max_ppl_ratio


def test_hand_built_profile_gets_the_defaults():
    p = QuantProfile(name="x", description="x", quants=("Q4_K_M",), context_length=1024,
                     memory_budget_mb=1000)
    assert p.eval_context == 512 and p.ram_gb is None and p.min_decode_tps is None
    # every quant below 8 bits gets the domain imatrix (issue 18: Q4 only inverted verdicts)
    assert p.imatrix_quants == ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q4_K_X")
    assert p.thresholds == DEFAULT_THRESHOLDS and p.thresholds is not DEFAULT_THRESHOLDS
    assert p.memory_budget_bytes == 1000 * MIB
    assert hash(p) == hash(dataclasses.replace(p))  # still hashable despite the dict field
    partial = dataclasses.replace(p, thresholds={})
    assert partial.thresholds_for("Q8_0") == DEFAULT_THRESHOLDS["Q8_0"]
    assert partial.thresholds_for("IQ2_XS") == QuantThresholds()


def test_targets_command_lists_every_profile():
    result = CliRunner().invoke(cli, ["targets"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == available_profiles()
    assert lines[2] == ("phone-4gb  Q4_K_M, Q4_K_X, Q4_0          ctx 2048  budget  2,288 MiB  "
                        "floor 30 tok/s   Entry-level phone (4 GB RAM) running llama.cpp-based "
                        "apps on the CPU")
    assert "Q4_K_M, Q5_K_M, Q6_K, Q8_0    ctx 8192  budget  9,155 MiB  floor 10 tok/s" in lines[0]


# --------------------------------------------------------------------------- parsing

VALID = {"name": "t", "description": "test target", "quants": ["Q4_K_M", "Q8_0"],
         "context_length": 2048, "memory_budget_mb": 3000}


def _problems(data, where="x.yaml") -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_profile(data, where)
    return caught.value.problems


def test_minimal_profile_parses():
    p = parse_profile(dict(VALID), "x.yaml")
    assert p == QuantProfile(name="t", description="test target", quants=("Q4_K_M", "Q8_0"),
                             context_length=2048, memory_budget_mb=3000)


def test_every_problem_reported_at_once(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "name: x\n"
        'description: ""\n'
        "quants: [Q4_K_M, Q3_K_S, Q4_K_M]\n"
        "imatrix_quants: [IQ2_XS]\n"
        "context_length: 0\n"
        "memory_budget_mb: lots\n"
        "min_decode_tps: -1\n"
        "colour: blue\n"
        "thresholds:\n"
        "  Q4_K_M: {min_top1: 1.5, max_kld_mean: -0.1, max_ppl_ratio: 0.9, max_accuracy_drop: 2,"
        " speed: 3}\n"
        "  F16: {max_kld_mean: 0.1}\n"
        "  Q8_0: {max_kld_mean: low}\n"
        "  Q5_K_M: 0.05\n")
    with pytest.raises(ConfigError) as caught:
        load_profile(str(path))
    w = str(path)
    choose = "(choose from Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_K_X)"
    expected = (
        f"{w}: colour: unknown field",
        f"{w}: description: must be a non-empty string",
        f"{w}: quants[1]: unknown quant 'Q3_K_S' {choose}",
        f"{w}: quants[2]: 'Q4_K_M' is listed twice",
        f"{w}: imatrix_quants[0]: unknown quant 'IQ2_XS' {choose}",
        f"{w}: context_length: must be a positive integer, got 0",
        f"{w}: memory_budget_mb: must be a positive integer, got 'lots'",
        f"{w}: min_decode_tps: must be a positive number or null, got -1",
        f"{w}: thresholds.Q4_K_M.min_top1: must be between 0 and 1",
        f"{w}: thresholds.Q4_K_M.max_kld_mean: must be 0 or more",
        f"{w}: thresholds.Q4_K_M.max_ppl_ratio: must be 1 or more (a ratio to F16 perplexity)",
        f"{w}: thresholds.Q4_K_M.max_accuracy_drop: must be between 0 and 1 (a fraction)",
        f"{w}: thresholds.Q4_K_M.speed: unknown limit (choose from max_kld_mean, min_top1, "
        "max_ppl_ratio, max_accuracy_drop)",
        f"{w}: thresholds.F16: unknown quant 'F16' {choose}",
        f"{w}: thresholds.Q8_0.max_kld_mean: must be a number or null, got 'low'",
        f"{w}: thresholds.Q5_K_M: must be a mapping of limits (max_kld_mean, min_top1, "
        "max_ppl_ratio, max_accuracy_drop), got 0.05",
    )
    assert caught.value.problems == expected
    assert caught.value.message == "invalid profile (16 problems):\n  " + "\n  ".join(expected)
    assert caught.value.hint == "see quant_profiles/phone.yaml for a valid example"


def test_missing_fields_and_bad_types():
    assert _problems({"quants": "Q4_K_M", "eval_context": True, "ram_gb": "six",
                      "imatrix_quants": "Q4_0", "thresholds": [1]}) == (
        "x.yaml: name: missing",
        "x.yaml: description: missing",
        "x.yaml: context_length: missing",
        "x.yaml: memory_budget_mb: missing",
        "x.yaml: quants: must be a non-empty list of quant names",
        "x.yaml: imatrix_quants: must be a list of quant names",
        "x.yaml: eval_context: must be a positive integer, got True",
        "x.yaml: ram_gb: must be a positive number or null, got 'six'",
        "x.yaml: thresholds: must be a mapping of quant name to limits, got a list",
    )
    assert _problems(["not", "a", "mapping"]) == (
        "x.yaml: (top level): must be a mapping of fields, got a list",)
    assert _problems({**VALID, "quants": []}) == (
        "x.yaml: quants: must be a non-empty list of quant names",)


def test_single_problem_message():
    with pytest.raises(ConfigError) as caught:
        parse_profile({**VALID, "context_length": -1}, "x.yaml")
    assert caught.value.message == ("invalid profile (1 problem):\n"
                                    "  x.yaml: context_length: must be a positive integer, got -1")


def test_shipped_profile_problems_name_the_repo_path(tmp_path, monkeypatch):
    monkeypatch.setattr("edgetune.profiles.PROFILES_DIR", tmp_path / "quant_profiles")
    (tmp_path / "quant_profiles").mkdir()
    (tmp_path / "quant_profiles" / "x.yaml").write_text(
        "name: x\ndescription: x\nquants: [Q4_K_M]\ncontext_length: 2048\n"
        "memory_budget_mb: 3000\nthresholds: {Q4_K_M: {min_top1: 2}}\n")
    with pytest.raises(ConfigError) as caught:
        load_profile("x")
    assert caught.value.problems == (
        "quant_profiles/x.yaml: thresholds.Q4_K_M.min_top1: must be between 0 and 1",)


def test_unknown_target_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        load_profile("nosuch")
    assert caught.value.message == "unknown target 'nosuch'"
    assert caught.value.hint == ("choose one of: desktop, phone, phone-4gb, phone-6gb, phone-8gb, "
                                 "tablet")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: not valid YAML"):
        load_profile(str(bad))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_profile(str(empty))
    assert caught.value.problems[0] == f"{empty}: name: missing"


def test_threshold_override_merges_over_defaults():
    p = parse_profile({**VALID, "thresholds": {
        "Q4_K_M": {"max_kld_mean": 0.2},  # one field: the other three keep their defaults
        "Q8_0": {"min_top1": None, "max_accuracy_drop": 0},  # null turns a check off; 0 is a limit
        "Q6_K": {},
    }}, "x.yaml")
    assert p.thresholds["Q4_K_M"] == QuantThresholds(max_kld_mean=0.2, min_top1=0.85,
                                                     max_ppl_ratio=1.10, max_accuracy_drop=0.05)
    assert p.thresholds["Q8_0"] == QuantThresholds(max_kld_mean=0.01, min_top1=None,
                                                   max_ppl_ratio=1.01, max_accuracy_drop=0.0)
    for quant in ("Q6_K", "Q5_K_M", "Q4_0"):
        assert p.thresholds[quant] == DEFAULT_THRESHOLDS[quant]
    assert isinstance(p.thresholds["Q4_K_M"].max_kld_mean, float)
    assert DEFAULT_THRESHOLDS["Q4_K_M"].max_kld_mean == 0.10  # the defaults are not mutated
    # An integer limit is accepted and stored as a float; boundaries are allowed.
    q = parse_profile({**VALID, "thresholds": {"Q4_0": {"max_ppl_ratio": 1, "min_top1": 1,
                                                        "max_kld_mean": 0}}}, "x.yaml")
    assert q.thresholds["Q4_0"] == QuantThresholds(0.0, 1.0, 1.0, 0.05)
    assert parse_profile({**VALID, "thresholds": None}, "x.yaml").thresholds == DEFAULT_THRESHOLDS


def test_gate_fields_parse():
    p = parse_profile({**VALID, "imatrix_quants": [], "min_decode_tps": 8, "ram_gb": 5.5}, "x.yaml")
    assert p.imatrix_quants == () and p.min_decode_tps == 8.0 and p.ram_gb == 5.5
    assert parse_profile({**VALID, "min_decode_tps": None}, "x.yaml").min_decode_tps is None


def test_min_decode_ratio_parses_and_null_turns_it_off():
    assert parse_profile(dict(VALID), "x.yaml").min_decode_ratio == DEFAULT_MIN_DECODE_RATIO
    assert parse_profile({**VALID, "min_decode_ratio": 1}, "x.yaml").min_decode_ratio == 1.0
    assert parse_profile({**VALID, "min_decode_ratio": None}, "x.yaml").min_decode_ratio is None
    for bad in (0, -0.5, "fast", True, float("inf")):
        with pytest.raises(ConfigError) as caught:
            parse_profile({**VALID, "min_decode_ratio": bad}, "x.yaml")
        assert caught.value.problems == (
            f"x.yaml: min_decode_ratio: must be a positive number or null, got {bad!r}",)


# --------------------------------------------------------------------------- gates

PROFILE = QuantProfile(name="phone-6gb", description="test", quants=("Q4_K_M", "Q8_0"),
                       context_length=2048, memory_budget_mb=3400, min_decode_tps=8.0)

GOOD = {"kld_mean": 0.05, "top1": 0.9, "ppl_ratio": 1.05, "task_accuracy": 0.78,
        "f16_task_accuracy": 0.80, "decode_tps": 12.0, "ram_needed_bytes": 3000 * MIB}


def test_gate_quant_passes_with_every_check_recorded():
    result = gate_quant("Q4_K_M", GOOD, PROFILE)
    assert result == GateResult(quant="Q4_K_M", passed=True, reasons=(), checks={
        "kld_mean": {"value": 0.05, "limit": 0.10, "passed": True},
        "top1": {"value": 0.9, "limit": 0.85, "passed": True},
        "ppl_ratio": {"value": 1.05, "limit": 1.10, "passed": True},
        "accuracy_drop": {"value": 0.02, "limit": 0.05, "passed": True,
                          "task_accuracy": 0.78, "f16_task_accuracy": 0.80},
        "decode_tps": {"value": 12.0, "limit": 8.0, "passed": True},
        "decode_ratio": {"skipped": True, "why": "not measured"},  # no F16 speed to compare with
        "ram_needed_bytes": {"value": 3000 * MIB, "limit": 3400 * MIB, "passed": True},
    })
    assert list(result.checks) == ["kld_mean", "top1", "ppl_ratio", "accuracy_drop", "decode_tps",
                                   "decode_ratio", "ram_needed_bytes"]


@pytest.mark.parametrize(("change", "check", "reason"), [
    ({"kld_mean": 0.142}, "kld_mean", "mean KLD 0.142 > 0.100"),
    ({"top1": 0.812}, "top1", "top-1 agreement 0.812 < 0.850"),
    ({"ppl_ratio": 1.134}, "ppl_ratio", "PPL ratio 1.134 > 1.100"),
    ({"task_accuracy": 0.71}, "accuracy_drop", "task accuracy drop 0.090 > 0.050 (0.710 vs F16 0.800)"),
    ({"decode_tps": 4.1}, "decode_tps", "decode 4.1 tok/s < floor 8.0"),
    ({"ram_needed_bytes": 3650 * MIB}, "ram_needed_bytes",
     "needs 3,650 MiB RAM at 2048 ctx > budget 3,400 MiB"),
    # Close to the limit: more digits, so the two numbers never print the same.
    ({"kld_mean": 0.1004}, "kld_mean", "mean KLD 0.1004 > 0.1000"),
    ({"decode_tps": 7.96}, "decode_tps", "decode 7.96 tok/s < floor 8.00"),
    ({"ram_needed_bytes": 3400 * MIB + 1}, "ram_needed_bytes",
     "needs 3,401 MiB RAM at 2048 ctx > budget 3,400 MiB"),
    ({"ppl_ratio": float("nan")}, "ppl_ratio", "PPL ratio nan > 1.100"),
])
def test_gate_quant_fails_each_check(change, check, reason):
    result = gate_quant("Q4_K_M", {**GOOD, **change}, PROFILE)
    assert not result.passed
    assert result.reasons == (reason,)
    assert result.checks[check]["passed"] is False
    assert [name for name, c in result.checks.items() if c.get("passed") is False] == [check]


def test_limits_are_inclusive():
    at_limits = {"kld_mean": 0.10, "top1": 0.85, "ppl_ratio": 1.10, "task_accuracy": 0.75,
                 "f16_task_accuracy": 0.80, "decode_tps": 8.0, "ram_needed_bytes": 3400 * MIB}
    result = gate_quant("Q4_K_M", at_limits, PROFILE)
    assert result.passed, result.reasons
    assert result.checks["accuracy_drop"]["value"] == 0.05  # 0.80 - 0.75, without float noise


def test_every_failure_is_reported_in_order():
    bad = {"kld_mean": 0.02, "top1": 0.9, "ppl_ratio": 1.02, "task_accuracy": 0.5,
           "f16_task_accuracy": 0.6, "decode_tps": 2.0, "ram_needed_bytes": 4000 * MIB}
    result = gate_quant("Q8_0", bad, PROFILE)
    assert result.reasons == (
        "mean KLD 0.020 > 0.010",
        "top-1 agreement 0.900 < 0.950",
        "PPL ratio 1.020 > 1.010",
        "task accuracy drop 0.100 > 0.050 (0.500 vs F16 0.600)",
        "decode 2.0 tok/s < floor 8.0",
        "needs 4,000 MiB RAM at 2048 ctx > budget 3,400 MiB",
    )


def test_missing_metrics_are_skipped_not_failed():
    result = gate_quant("Q4_K_M", {}, PROFILE)
    assert result.passed and result.reasons == ()
    assert result.checks == {name: {"skipped": True, "why": "not measured"} for name in (
        "kld_mean", "top1", "ppl_ratio", "accuracy_drop", "decode_tps", "decode_ratio",
        "ram_needed_bytes")}
    # None counts as missing; accuracy needs both numbers.
    result = gate_quant("Q4_K_M", {"kld_mean": None, "task_accuracy": 0.1}, PROFILE)
    assert result.passed
    assert result.checks["kld_mean"] == result.checks["accuracy_drop"] == {
        "skipped": True, "why": "not measured"}


def test_checks_without_a_limit_are_skipped():
    profile = dataclasses.replace(PROFILE, min_decode_tps=None, thresholds={
        **DEFAULT_THRESHOLDS, "Q4_K_M": QuantThresholds()})
    result = gate_quant("Q4_K_M", {**GOOD, "kld_mean": 9.0, "decode_tps": 0.1,
                                   "task_accuracy": 0.0}, profile)
    assert result.passed
    assert result.checks["kld_mean"] == {"skipped": True, "why": "no limit", "value": 9.0}
    assert result.checks["decode_tps"] == {"skipped": True, "why": "no limit", "value": 0.1}
    assert result.checks["accuracy_drop"] == {"skipped": True, "why": "no limit", "value": 0.8}
    assert result.checks["ram_needed_bytes"]["passed"] is True  # the RAM budget always applies


def test_profile_overrides_apply_to_gates():
    four = load_profile("phone-4gb")
    metrics = {"kld_mean": 0.18, "top1": 0.79, "ppl_ratio": 1.18}
    assert gate_quant("Q4_0", metrics, four).passed
    assert gate_quant("Q4_0", metrics, load_profile("phone-6gb")).reasons == (
        "mean KLD 0.180 > 0.150", "top-1 agreement 0.790 < 0.800", "PPL ratio 1.180 > 1.150")


def test_f16_is_never_gated():
    with pytest.raises(ValueError, match="F16 is the reference"):
        gate_quant("F16", GOOD, PROFILE)
    report = {"F16": {"ppl_ratio": 1.0, "task_accuracy": 0.80, "decode_tps": 1.0,
                      "ram_needed_bytes": 10**12},
              "Q4_K_M": {**GOOD, "f16_task_accuracy": None, "task_accuracy": 0.70},
              "Q8_0": {"ppl_ratio": 1.001, "decode_tps": 9.0}}
    results = gate_report(report, PROFILE)
    assert list(results) == ["Q4_K_M", "Q8_0"]
    # F16's accuracy is the baseline of every quant's accuracy drop.
    assert results["Q4_K_M"].reasons == ("task accuracy drop 0.100 > 0.050 (0.700 vs F16 0.800)",)
    assert results["Q8_0"].passed
    assert results["Q8_0"].checks["accuracy_drop"] == {"skipped": True, "why": "not measured"}
    assert "f16_task_accuracy" not in report["Q8_0"]  # the caller's metrics are not modified


def test_gate_report_on_an_eval_report_shape():
    """evaluate() writes ppl_ratio, decode_tps and ram_needed_bytes today; the rest is skipped."""
    quants = {"F16": {"ppl": 10.0, "ppl_ratio": 1.0, "decode_tps": 50.0,
                      "ram_needed_bytes": 900 * MIB, "size_bytes": 1},
              "Q4_K_M": {"ppl": 10.5, "ppl_ratio": 1.05, "decode_tps": 80.0,
                         "ram_needed_bytes": 400 * MIB, "size_bytes": 1}}
    result = gate_report(quants, PROFILE)["Q4_K_M"]
    assert result.passed
    assert [n for n, c in result.checks.items() if c.get("skipped")] == [
        "kld_mean", "top1", "accuracy_drop"]


def test_as_dict_is_json_serialisable():
    import numpy as np

    metrics = {**GOOD, "kld_mean": np.float64(0.2), "ram_needed_bytes": np.int64(3000 * MIB)}
    result = gate_quant("Q4_K_M", metrics, PROFILE)
    data = result.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {"passed": False, "reasons": ["mean KLD 0.200 > 0.100"],
                    "checks": {**gate_quant("Q4_K_M", GOOD, PROFILE).checks,
                               "kld_mean": {"value": 0.2, "limit": 0.10, "passed": False}}}
    assert type(data["checks"]["kld_mean"]["value"]) is float
    assert type(data["checks"]["ram_needed_bytes"]["value"]) is int
    data["checks"]["kld_mean"]["value"] = 0  # a copy: the result is unchanged
    assert result.checks["kld_mean"]["value"] == 0.2


def test_failures_table_rows_and_gate_failure():
    results = gate_report({"F16": {}, "Q4_K_M": {**GOOD, "kld_mean": 0.142, "decode_tps": 4.1},
                           "Q5_K_M": GOOD, "Q8_0": {"kld_mean": 0.02}}, PROFILE)
    rows = [("Q4_K_M", "mean KLD 0.142 > 0.100"), ("Q4_K_M", "decode 4.1 tok/s < floor 8.0"),
            ("Q8_0", "mean KLD 0.020 > 0.010")]
    assert failures_table_rows(results) == rows
    assert failures_table_rows(list(results.values())) == rows
    with pytest.raises(GateFailure) as caught:
        check_gates(results, "phone-6gb")
    err = caught.value
    assert isinstance(err, EdgetuneError) and err.exit_code == 1
    assert err.message == "2 of 3 quants failed the gates for target 'phone-6gb': Q4_K_M, Q8_0"
    assert err.hint == ("see the table above; fix the model/data, choose another --target, or pass "
                        "--accept-gate-failure to ship anyway (recorded in the manifest)")
    assert err.results == results
    check_gates({"Q5_K_M": results["Q5_K_M"]}, "phone-6gb")  # all passed: nothing raised
