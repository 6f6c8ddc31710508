"""Tests for edgetune.training.health: warnings about a GRPO run that is not learning."""

from __future__ import annotations

import pytest

from edgetune.training.health import FORMAT_REWARDS, HealthWarning, TrainingHealth

HEALTHY = {
    "reward": 1.2, "reward_std": 0.6, "frac_reward_zero_std": 0.25,
    "rewards/correctness/mean": 0.8, "rewards/number/mean": 0.4,
    "rewards/strict_format/mean": 0.3, "rewards/soft_format/mean": 0.45,
    "rewards/xml_count/mean": 0.4, "completions/clipped_ratio": 0.1,
    "completions/mean_length": 140.0,
}
# One unhealthy variant per condition, otherwise healthy.
SICK = {
    "no_signal": {**HEALTHY, "frac_reward_zero_std": 0.95},
    "format_zero": {**HEALTHY, "rewards/strict_format/mean": 0.0, "rewards/soft_format/mean": 0.0,
                    "rewards/xml_count/mean": -0.01},
    "length_capped": {**HEALTHY, "completions/clipped_ratio": 0.9},
}


def feed(health: TrainingHealth, metrics_per_step, start: int = 1) -> list[list[HealthWarning]]:
    return [health.observe(step, m) for step, m in enumerate(metrics_per_step, start)]


@pytest.mark.parametrize("code", list(SICK))
def test_fires_exactly_at_window(code):
    health = TrainingHealth(window=5, max_completion_length=256)
    got = feed(health, [SICK[code]] * 5)
    assert got[:4] == [[]] * 4
    assert [w.code for w in got[4]] == [code]
    assert got[4][0].step == 5
    assert health.warnings == got[4]


@pytest.mark.parametrize("code", list(SICK))
def test_healthy_step_interrupts_the_streak(code):
    health = TrainingHealth(window=5)
    steps = [SICK[code]] * 4 + [HEALTHY] + [SICK[code]] * 4
    assert all(w == [] for w in feed(health, steps))
    assert health.observe(10, SICK[code])[0].code == code


@pytest.mark.parametrize("code", list(SICK))
def test_warns_once_then_rearms_after_recovery(code):
    health = TrainingHealth(window=3)
    feed(health, [SICK[code]] * 3)
    assert feed(health, [SICK[code]] * 10, start=4) == [[]] * 10  # no duplicates while it persists
    # Clear for fewer than `window` steps: still disarmed.
    assert feed(health, [HEALTHY] * 2 + [SICK[code]] * 5, start=14) == [[]] * 7
    # Clear for `window` steps, then sick for `window` steps: warns again.
    got = feed(health, [HEALTHY] * 3 + [SICK[code]] * 3, start=21)
    assert got[:5] == [[]] * 5
    assert [w.code for w in got[5]] == [code] and got[5][0].step == 26
    assert [w.step for w in health.warnings] == [3, 26]


def test_missing_keys_never_fire():
    health = TrainingHealth(window=1)
    assert feed(health, [{}] * 5 + [{"reward": 0.0, "loss": 0.1}] * 5) == [[]] * 10
    assert health.warnings == []


def test_steps_without_the_key_do_not_break_or_extend_a_streak():
    health = TrainingHealth(window=3)
    sick = {"completions/clipped_ratio": 1.0}
    assert feed(health, [sick, {}, sick, {"reward": 1.0}]) == [[]] * 4
    assert health.observe(5, sick)[0].code == "length_capped"


def test_non_numeric_values_are_ignored_and_strings_parse():
    health = TrainingHealth(window=2)
    assert feed(health, [{"frac_reward_zero_std": "n/a"}, {"frac_reward_zero_std": None},
                         {"frac_reward_zero_std": float("nan")}, {"frac_reward_zero_std": True}]) == [[]] * 4
    got = feed(health, [{"frac_reward_zero_std": "1.0"}, {"frac_reward_zero_std": "0.95"}], start=5)
    assert got[1][0].code == "no_signal"


def test_reward_std_zero_is_no_signal_when_frac_is_not_logged():
    health = TrainingHealth(window=2)
    got = feed(health, [{"reward_std": 0.0}, {"reward_std": "0"}])
    assert [w.code for w in got[1]] == ["no_signal"]
    assert TrainingHealth(window=1).observe(1, {"reward_std": 0.3}) == []


def test_each_format_reward_warns_separately_and_names_itself():
    health = TrainingHealth(window=2)
    zero = {f"rewards/{name}/mean": 0.0 for name in FORMAT_REWARDS}
    got = feed(health, [zero, zero])
    # One warning naming every format reward, not one per reward (three lines saying the same).
    assert [w.code for w in got[1]] == ["format_zero"]
    assert all(name in got[1][0].message for name in FORMAT_REWARDS)
    # xml_count can go negative: still "never formats".
    health = TrainingHealth(window=1)
    assert health.observe(1, {"rewards/xml_count/mean": -0.002})[0].code == "format_zero"
    # The correctness reward at 0 is not a format problem.
    assert TrainingHealth(window=1).observe(1, {"rewards/correctness/mean": 0.0}) == []


def test_one_format_reward_above_zero_means_the_format_is_written():
    health = TrainingHealth(window=1)
    assert len(health.observe(1, {"rewards/strict_format/mean": 0.0,
                                  "rewards/soft_format/mean": 0.0})) == 1
    got = health.observe(2, {"rewards/strict_format/mean": 0.0, "rewards/soft_format/mean": 0.5})
    assert got == []  # soft format written: the model is learning the layout
    got = health.observe(3, {"rewards/strict_format/mean": 0.0, "rewards/soft_format/mean": 0.0})
    assert [w.code for w in got] == ["format_zero"]  # re-armed after a clear step


def test_the_format_advice_fits_what_was_given():
    zero = {"rewards/strict_format/mean": 0.0}
    without = TrainingHealth(window=1).observe(1, zero)[0].message
    given = TrainingHealth(window=1, system_prompt_given=True).observe(1, zero)[0].message
    assert "--system-prompt-file" in without and "--warm-start always" in without
    # A system prompt was given: telling the creator to add one is no advice.
    assert "--system-prompt-file" not in given and "--warm-start always" in given


def test_thresholds_are_inclusive_and_configurable():
    health = TrainingHealth(window=1, zero_std_threshold=0.5, clipped_threshold=0.5)
    got = health.observe(1, {"frac_reward_zero_std": 0.5, "completions/clipped_ratio": 0.5})
    assert {w.code for w in got} == {"no_signal", "length_capped"}
    assert TrainingHealth(window=1).observe(1, {"frac_reward_zero_std": 0.89,
                                                "completions/clipped_ratio": 0.79}) == []


def test_window_one_warns_at_once_and_rearms_after_one_clear_step():
    health = TrainingHealth(window=1)
    sick, healthy = SICK["no_signal"], HEALTHY
    got = feed(health, [sick, sick, healthy, sick])
    assert [[w.code for w in ws] for ws in got] == [["no_signal"], [], [], ["no_signal"]]


def test_messages_suggest_the_flags():
    health = TrainingHealth(window=1, max_completion_length=512)
    unhealthy = {**SICK["no_signal"], **SICK["format_zero"], "frac_reward_zero_std": 1.0,
                 "completions/clipped_ratio": 1.0}
    by_code = {w.code: w.message for w in health.observe(7, unhealthy)}
    assert set(by_code) == {"no_signal", "format_zero", "length_capped"}
    assert "--sft-data" in by_code["no_signal"] and "--num-generations" in by_code["no_signal"]
    assert "--temperature" in by_code["no_signal"] and "nothing to learn" in by_code["no_signal"]
    assert "strict_format" in by_code["format_zero"] and "<reasoning>" in by_code["format_zero"]
    assert "--sft-data" in by_code["format_zero"]
    assert "--max-completion-length 512" in by_code["length_capped"]
    assert "score 0" in by_code["length_capped"]
    assert "--max-completion-length" in TrainingHealth(window=1).observe(
        1, {"completions/clipped_ratio": 1.0})[0].message


def test_warnings_property_is_a_copy():
    health = TrainingHealth(window=1)
    health.observe(1, SICK["length_capped"])
    health.warnings.clear()
    assert len(health.warnings) == 1


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        TrainingHealth(window=0)
