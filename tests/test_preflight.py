"""Before any work: a wrong base model, an unknown licence or an unusable output fails in the
first second with the right hint; settings fit the model; status knows a flag-driven build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune import basemodel, preflight
from edgetune.cli import cli
from edgetune.errors import ConfigError, ModelError, OutputExistsError
from edgetune.training.config import TrainConfig
from edgetune.training.defaults import check_settings, completion_cap, fit_settings
from edgetune.training.runner import rough_estimate, rough_step_seconds, time_estimate


def _build(home: Path, *args: str):
    return CliRunner(env={"EDGETUNE_HOME": str(home)}).invoke(cli, ["build", *args])


def test_a_mistyped_folder_is_no_such_folder_not_a_download(tmp_path):
    result = _build(tmp_path / "home", "--base-model", "./nonexistent-dir", "--out",
                    str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "Error: no such folder: ./nonexistent-dir" in result.output
    assert "hf download" not in result.output
    # It failed before anything was made: no signing key, no output folder.
    assert not (tmp_path / "home" / "keys").exists() and not (tmp_path / "out").exists()


def test_an_unreachable_hub_id_fails_before_the_data_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = _build(tmp_path / "home", "--base-model", "Qwen/Qwen2.5-1.5B-Instruct", "--out",
                    str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "hf download Qwen/Qwen2.5-1.5B-Instruct" in result.output
    assert "held-out rows" not in result.output  # the data stage never ran
    assert not (tmp_path / "home" / "keys").exists()


def _model_folder(path: Path, *, config: dict | None = None, weights: bool = True,
                  card: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config if config is not None else {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
        "num_hidden_layers": 24, "vocab_size": 32000, "intermediate_size": 5632,
        "num_attention_heads": 16, "num_key_value_heads": 4}))
    if weights:
        (path / "model.safetensors").write_bytes(b"\0")
    if card is not None:
        (path / "README.md").write_text(card)
    return path


def test_incomplete_model_folders_are_refused_by_name(tmp_path):
    no_type = _model_folder(tmp_path / "a", config={"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ModelError, match="has no model_type"):
        basemodel.resolve(str(no_type))
    no_weights = _model_folder(tmp_path / "b", weights=False)
    with pytest.raises(ModelError, match="no weights"):
        basemodel.resolve(str(no_weights))


def test_licence_and_hub_id_come_from_the_model_not_a_guess(tmp_path):
    from edgetune.project import demo_project

    cached = tmp_path / "hub" / "models--Qwen--Qwen2.5-1.5B-Instruct" / "snapshots" / "abc123"
    _model_folder(cached, card="---\nlicense: apache-2.0\n---\n# Qwen\n")
    base = basemodel.resolve(str(cached))
    assert (base.hub_id, base.license) == ("Qwen/Qwen2.5-1.5B-Instruct", "apache-2.0")
    assert 1.0e9 < base.parameters < 2.0e9

    bare = _model_folder(tmp_path / "mine")
    project = demo_project().__class__(name="x", data=demo_project().data, base_model=str(bare))
    with pytest.raises(ConfigError, match="licence is unknown") as err:
        preflight.check_base(project)
    assert "base_model_license" in err.value.hint


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        preflight.check_output(tmp_path / "out")


def test_settings_fit_a_real_model_and_keep_what_was_given():
    lengths = [60, 70, 80, 90, 100, 110, 120, 130, 140, 400]
    fitted = fit_settings(TrainConfig(), parameters=1_500_000_000, cuda=True,
                          answer_token_lengths=lengths, explicit={"lora_r": "flag"})
    c = fitted.config
    assert (c.learning_rate, c.num_generations, c.lora_r) == (2e-5, 8, 16)  # lora_r was given
    assert c.max_completion_length == completion_cap(lengths, cuda=True) >= 140
    assert fitted.sources["lora_r"] == "flag"
    assert fitted.sources["learning_rate"] == "default for this model"
    # A tiny (demo or test) model keeps TrainConfig's own settings.
    toy = fit_settings(TrainConfig(), parameters=1_000_000, cuda=False, answer_token_lengths=lengths,
                       explicit={})
    assert toy.config == TrainConfig()


def test_a_cap_shorter_than_the_answers_is_warned_about():
    problems = check_settings(TrainConfig(max_completion_length=64), [100] * 10)
    assert problems and "max_completion_length 64" in problems[0] and "cut off" in problems[0]
    assert check_settings(TrainConfig(max_completion_length=256), [100] * 10) == []


def test_the_time_estimate_says_when_the_machine_is_busy(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    text = time_estimate(19.0, 29, cuda=False)
    assert "about 9 min for the 29 steps left" in text and "busy" in text
    monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
    assert "busy" not in time_estimate(19.0, 29, cuda=False)


def test_an_estimate_comes_before_the_first_step_from_size_steps_and_device(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
    demo = TrainConfig(steps=30)  # 2 prompts x 4 completions x 64 tokens
    smol = rough_step_seconds(demo, 135_000_000, cuda=False)
    assert 19 / 2 <= smol <= 19 * 2  # measured: 19 s a step on 2 quiet cores
    assert rough_step_seconds(demo, 270_000_000, cuda=False) > 1.9 * smol
    assert rough_step_seconds(demo, 135_000_000, cuda=True) < smol / 5
    text = rough_estimate(demo, 135_000_000, cuda=False)
    assert text.startswith("estimate before the first step: about ")
    assert "30 GRPO steps (135M parameters on the CPU" in text and "busy" not in text
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert "busy" in rough_estimate(demo, 135_000_000, cuda=False)


@pytest.mark.slow
def test_status_knows_the_options_of_a_flag_driven_build(demo_build):
    """The build was driven by flags (--base-model, --steps 6): status replays them."""
    out, public_key, _ = demo_build
    result = CliRunner().invoke(cli, ["status", "--out", str(out), "--signing-key",
                                      str(public_key.with_suffix(".key")), "--json"])
    assert result.exit_code == 0, result.output
    states = json.loads(result.output)["phone"]
    assert [s["status"] for s in states] == ["up to date"] * len(states), states


# --------------------------------------------------------------------------- issue 19

def test_an_output_inside_a_file_is_refused_by_name(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="f is a file, not a folder"):
        preflight.check_output(tmp_path / "f" / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_output_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot write to .*ro .*Permission denied"):
            preflight.check_output(tmp_path / "ro" / "out")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_disk_too_small_for_the_quants_is_refused_before_work(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    # A model whose F16 copies alone need more than the disk has; a small one passes.
    huge = basemodel.BaseModel(tmp_path, None, None, parameters=free)
    with pytest.raises(ConfigError, match="not enough disk space for this build") as err:
        preflight.check_space(tmp_path / "out", huge, ("Q4_K_M", "Q8_0"))
    assert "2 quant(s)" in err.value.message
    preflight.check_space(tmp_path / "out", basemodel.BaseModel(tmp_path, None, None,
                                                                 parameters=1_000), ("Q4_K_M",))
    preflight.check_space(tmp_path / "out", None, ("Q4_K_M",))  # the demo: size unknown


def test_the_key_is_checked_whole_before_work(tmp_path):
    from edgetune.errors import KeyFileError
    from edgetune.keys import generate_keypair

    pair = generate_keypair(tmp_path / "k", "a", "secret words")
    preflight.check_key(pair.private_key, "secret words")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        preflight.check_key(pair.private_key, "other words")
    pair.public_key.write_bytes(generate_keypair(tmp_path / "k2", "b").public_key.read_bytes())
    with pytest.raises(KeyFileError, match="a.pub is not the public key of"):
        preflight.check_key(pair.private_key, "secret words")
    with pytest.raises(KeyFileError, match="not found"):
        preflight.check_key(tmp_path / "missing.key", None)
    preflight.check_key(None, None)  # the default key, not made yet: the build makes it
