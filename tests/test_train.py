"""train: real TRL GRPO and SFT runs on tiny models on CPU; checkpoints, Ctrl-C, resume, refusals.

A random tiny model never writes the format tags, so every completion of a prompt gets the same
reward and GRPO's gradient is exactly zero: its LoRA would never move, and "resume gives the same
weights" would hold trivially. Most tests therefore train ``r1_base``: the tiny llama briefly
pretrained on ``<think>\\n...\\n</think>\\nANSWER`` replies, whose completions differ in reward.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import click.testing
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edgetune import hf
from edgetune.artifacts import Adapter
from edgetune.training.backends import TrlBackend, select_backend
from edgetune.cli import cli
from edgetune.data import QARow
from edgetune.errors import ConfigError, ModelError, OutputExistsError
from edgetune.merge import merge
from edgetune.sft_data import load_sft
from edgetune.tinymodel import pretrain
from edgetune.training.checkpoints import checkpoint_dir
from edgetune.training.config import LOG_FILE, TrainConfig, TrainingInterrupted
from edgetune.training.trainer import train

SIGINT_AT_IMPORT = signal.getsignal(signal.SIGINT)


ROWS = tuple(QARow(question=f"What is {i} plus {i * 3}?", answer=str(i * 4), reasoning=None,
                   source=f"qa.jsonl:{i}") for i in range(1, 7))
# One prompt and its 4 completions per step; a checkpoint every 2 steps.
GRPO = TrainConfig(steps=4, num_generations=4, prompts_per_step=1, max_completion_length=16,
                   answer_format="r1", checkpoint_every=2)
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "artifact.json",
                 LOG_FILE]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and two threads on a busy 2-core machine run
    ten times slower (they spin waiting for each other); one thread is also reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _r1_reply(i: int) -> str:
    return f"<think>\n{i} + {i * 3}\n</think>\n{i * 4}"


@pytest.fixture(scope="module")
def r1_base(tiny_model_factory, tmp_path_factory) -> Path:
    """The tiny llama after 40 steps on R1-style replies: it writes the tags often, not always."""
    path = tmp_path_factory.mktemp("r1-base") / "model"
    shutil.copytree(tiny_model_factory("llama"), path)
    model, tokenizer = hf.load_causal_lm(path), hf.load_tokenizer(path)
    chats = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"What is {i} plus {i * 3}?"},
         {"role": "assistant", "content": _r1_reply(i)}], tokenize=False) for i in range(200)]
    losses = pretrain(model, tokenizer, chats, steps=40, batch_size=8)
    assert losses[-1] < losses[0] / 3
    model.save_pretrained(path)
    return path


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _steps(log: list[dict]) -> list[int]:
    """The step of every per-step metrics entry (config and warning entries have an event)."""
    return [entry["step"] for entry in log if "event" not in entry]


def _by_step(log: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in log if "event" not in entry}


def _weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter_dir / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def straight(r1_base, tmp_path_factory) -> SimpleNamespace:
    """Run A: GRPO's 4 steps without interruption."""
    out = tmp_path_factory.mktemp("straight") / "adapter"
    notes, steps = [], []
    adapter = train(str(r1_base), ROWS, GRPO, out, on_note=notes.append, on_step=steps.append)
    return SimpleNamespace(out=out, adapter=adapter, notes=notes, steps=steps)


@pytest.fixture(scope="module")
def stopped(r1_base, tmp_path_factory) -> SimpleNamespace:
    """Run B, first half: Ctrl-C (a real SIGINT) while step 2 is being reported."""
    out = tmp_path_factory.mktemp("stopped") / "adapter"
    notes = []

    def ctrl_c(step):
        if step.step == 2:
            # Were train's handler missing, this SIGINT would end the whole pytest session.
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as caught:
        train(str(r1_base), ROWS, GRPO, out, on_note=notes.append, on_step=ctrl_c)
    work = checkpoint_dir(out)
    checkpoints = {p.name: sorted(f.name for f in p.iterdir()) for p in work.glob("checkpoint-*")}
    return SimpleNamespace(out=out, work=work, error=caught.value, notes=notes,
                           checkpoints=checkpoints, log=_log(work / LOG_FILE))


def _copy_stopped(stopped, tmp_path: Path) -> Path:
    """A private copy of run B's checkpoints, as if that run had been writing to ``out``."""
    out = tmp_path / "adapter"
    shutil.copytree(stopped.work, checkpoint_dir(out))
    return out


# --------------------------------------------------------------------------- GRPO

def test_grpo_on_cpu_writes_the_adapter_and_its_log(straight, r1_base):
    out = straight.out
    assert sorted(p.name for p in out.iterdir()) == ADAPTER_FILES
    assert not checkpoint_dir(out).exists()  # checkpoints were written every 2 steps, then removed
    loaded = Adapter.load(out)
    assert loaded == straight.adapter
    assert (loaded.path, loaded.method, loaded.backend, loaded.steps, loaded.base_model) == (
        out, "grpo", "trl", 4, str(r1_base))

    log = _log(out / LOG_FILE)
    assert log[0] == {"step": 0, "event": "config", **loaded.effective_config}
    effective = loaded.effective_config
    assert {k: effective[k] for k in ("method", "backend", "device", "base_bits", "lora_r",
                                      "per_device_train_batch_size", "gradient_accumulation_steps",
                                      "num_generations", "max_completion_length", "learning_rate",
                                      "loss_type", "beta", "optim", "lr_scheduler_type")} == {
        "method": "grpo", "backend": "trl", "device": "cpu", "base_bits": 16, "lora_r": 16,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "num_generations": 4,
        "max_completion_length": 16, "learning_rate": 5e-4, "loss_type": "dapo", "beta": 0.0,
        "optim": "adamw_torch_fused", "lr_scheduler_type": "linear"}
    # plain values, as written to the log, also in memory and in the note (not enum reprs)
    assert {type(v) for v in straight.adapter.effective_config.values()} <= {
        bool, int, float, str, type(None)}
    assert straight.notes[0] == "effective settings: " + ", ".join(
        f"{k}={v}" for k, v in straight.adapter.effective_config.items())
    assert "optim=adamw_torch_fused, weight_decay=0.0, lr_scheduler_type=linear" in straight.notes[0]
    # the time up front: before the first step, then measured after the second
    assert straight.notes[1].startswith("estimate before the first step: about ")
    assert straight.notes[2].startswith("a step takes ")

    assert _steps(log) == [1, 2, 3, 4]
    per_step = _by_step(log)
    # linear decay from 5e-4 to 0 over 4 steps, logged before each step's scheduler update
    assert [per_step[s]["learning_rate"] for s in (1, 2, 3, 4)] == pytest.approx(
        [5e-4, 3.75e-4, 2.5e-4, 1.25e-4])
    assert all(math.isfinite(per_step[s]["loss"]) for s in (1, 2, 3, 4))
    # what GRPO learns from: some prompt group whose completions got different rewards
    assert any(per_step[s]["frac_reward_zero_std"] < 1.0 for s in (1, 2, 3, 4))
    assert [(s.step, s.total) for s in straight.steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert straight.steps[0].metrics == {k: v for k, v in per_step[1].items() if k != "step"}


# --------------------------------------------------------------------------- Ctrl-C and resume

def test_ctrl_c_saves_a_checkpoint_and_raises(stopped):
    work = stopped.work
    assert isinstance(stopped.error, TrainingInterrupted)
    assert stopped.error.exit_code == 130
    assert stopped.error.message == (
        f"training stopped at step 2; checkpoint saved in {work / 'checkpoint-2'}")
    assert stopped.error.hint == "run the same command with --resume to continue from the checkpoint"
    assert "stopping: saving a checkpoint at the end of this step (Ctrl-C again to abort)" in stopped.notes
    # stopped at the step it was reported in, not one whole step later
    assert list(stopped.checkpoints) == ["checkpoint-2"]
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= set(stopped.checkpoints["checkpoint-2"])
    assert _steps(stopped.log) == [1, 2]
    assert not stopped.out.exists()  # no adapter until training finishes
    # handler restored (to what the process had: a shell's background job ignores SIGINT)
    assert signal.getsignal(signal.SIGINT) is SIGINT_AT_IMPORT


def test_resume_matches_an_uninterrupted_run(straight, stopped, r1_base, tmp_path):
    out = _copy_stopped(stopped, tmp_path)
    notes = []
    resumed = train(str(r1_base), ROWS, GRPO, out, resume=True, on_note=notes.append)

    assert "resuming from checkpoint-2" in notes
    assert not checkpoint_dir(out).exists()
    assert (resumed.method, resumed.steps) == ("grpo", 4)
    log = _log(out / LOG_FILE)
    assert [e for e in log if e.get("event") == "config"] == [log[0]]  # kept, not written again
    assert _steps(log) == [1, 2, 3, 4]
    a, b = _by_step(_log(straight.out / LOG_FILE)), _by_step(log)
    # the scheduler was restored: steps 3-4 continue the same linear decay
    assert [b[s]["learning_rate"] for s in (3, 4)] == [a[s]["learning_rate"] for s in (3, 4)]
    assert [b[s]["learning_rate"] for s in (3, 4)] == pytest.approx([2.5e-4, 1.25e-4])
    # The RNG state was restored too, so steps 3-4 sampled the very same completions: every
    # metric but the timings repeats exactly.
    timing = {"step_time"}
    for s in (3, 4):
        assert {k: v for k, v in b[s].items() if k not in timing} == {
            k: v for k, v in a[s].items() if k not in timing}

    # Weights, model and optimizer state restored, same samples: bitwise the same adapter.
    wa, wb = _weights(straight.out), _weights(out)
    assert sorted(wa) == sorted(wb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # ...and not trivially so: PEFT starts lora_B at zero, and training moved it.
    lora_b = [k for k in wa if "lora_B" in k]
    assert len(lora_b) == 7 * 2  # every LORA_TARGETS module of both layers
    assert all(wa[k].abs().max() > 0 for k in lora_b)


def test_resume_equality_rests_on_the_saved_rng_state(straight, stopped, r1_base, tmp_path):
    """Why the test above can ask for bitwise equality: the checkpoint's RNG state decides
    which completions steps 3-4 sample. Without it the run resumes (with a warning) but samples
    other completions, so rewards, losses and weights differ."""
    out = _copy_stopped(stopped, tmp_path)
    (checkpoint_dir(out) / "checkpoint-2" / "rng_state.pth").unlink()
    train(str(r1_base), ROWS, GRPO, out, resume=True)
    a, b = _by_step(_log(straight.out / LOG_FILE)), _by_step(_log(out / LOG_FILE))
    assert [b[s]["learning_rate"] for s in (3, 4)] == [a[s]["learning_rate"] for s in (3, 4)]
    assert [b[s]["loss"] for s in (3, 4)] != [a[s]["loss"] for s in (3, 4)]
    wa, wb = _weights(straight.out), _weights(out)
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- refusals

def test_resume_with_nothing_to_resume(tiny_model_factory, tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(ConfigError) as caught:
        train(str(tiny_model_factory("llama")), ROWS, GRPO, out, resume=True)
    assert caught.value.message == (
        f"nothing to resume: no complete checkpoint in {checkpoint_dir(out)}")
    assert caught.value.hint == "run without --resume to start training"
    assert not out.exists()


def test_starting_again_over_checkpoints_is_refused(stopped, r1_base, tmp_path):
    out = _copy_stopped(stopped, tmp_path)
    with pytest.raises(ConfigError) as caught:
        train(str(r1_base), ROWS, GRPO, out)
    assert caught.value.message == (
        f"an earlier training run stopped at step 2 ({checkpoint_dir(out)})")
    assert caught.value.hint == "add --resume to continue it, or --overwrite to start again"
    assert (checkpoint_dir(out) / "checkpoint-2" / "optimizer.pt").is_file()  # nothing deleted


def test_resume_with_changed_settings_names_them(stopped, r1_base, tmp_path):
    out = _copy_stopped(stopped, tmp_path)
    with pytest.raises(ConfigError) as caught:
        train(str(r1_base), ROWS, dataclasses.replace(GRPO, learning_rate=1e-3), out, resume=True)
    assert caught.value.message == (
        f"cannot resume: learning_rate differ from the run in {checkpoint_dir(out)}")
    assert "only --steps may grow" in caught.value.hint
    with pytest.raises(ConfigError, match=r"^cannot resume: data, lora_r differ from the run in "):
        train(str(r1_base), ROWS[:-1], dataclasses.replace(GRPO, lora_r=8), out, resume=True)
    assert (checkpoint_dir(out) / "checkpoint-2" / "optimizer.pt").is_file()


def test_overwrite_starts_afresh_over_checkpoints(stopped, r1_base, tmp_path):
    out = _copy_stopped(stopped, tmp_path)
    notes = []
    # Another learning rate: resuming would have been refused, so success means a fresh start.
    config = dataclasses.replace(GRPO, steps=2, learning_rate=1e-3)
    adapter = train(str(r1_base), ROWS, config, out, overwrite=True, on_note=notes.append)
    assert not any(n.startswith("resuming") for n in notes)
    log = _log(out / LOG_FILE)
    assert [e["learning_rate"] for e in log if e.get("event") == "config"] == [1e-3]
    assert _steps(log) == [1, 2]
    assert _by_step(log)[1]["learning_rate"] == pytest.approx(1e-3)
    assert (adapter.steps, adapter.effective_config["learning_rate"]) == (2, 1e-3)
    assert not checkpoint_dir(out).exists()


def test_existing_output_is_refused(tiny_model_factory, tmp_path):
    out = tmp_path / "adapter"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError) as caught:
        train(str(tiny_model_factory("llama")), ROWS, GRPO, out)
    assert caught.value.message == f"{out} already exists"
    assert caught.value.hint == "choose another output or pass --overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no checkpoints dir either
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only refusal")
def test_backends_on_a_cpu_machine():
    with pytest.raises(ConfigError) as caught:
        select_backend("unsloth")
    assert caught.value.message == (
        "the Unsloth backend needs an NVIDIA GPU (CUDA), and none was found")
    assert caught.value.hint == "use --backend trl, which runs on CPU"
    with pytest.raises(ConfigError) as caught:
        select_backend("nosuch")
    assert caught.value.message == "unknown training backend 'nosuch'"
    assert caught.value.hint == "choose auto, unsloth, trl"
    assert isinstance(select_backend("auto"), TrlBackend)
    assert select_backend("trl").name == "trl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only refusal")
def test_four_bit_base_on_cpu_is_refused(tiny_model_factory, tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(ConfigError) as caught:
        train(str(tiny_model_factory("llama")), ROWS, dataclasses.replace(GRPO, base_bits=4), out)
    assert caught.value.message == (
        "a 4-bit base needs an NVIDIA GPU (bitsandbytes), and none was found")
    assert caught.value.hint == "drop --base-bits 4 to train the 16-bit base on CPU"
    assert not out.exists()


def test_all_invalid_settings_are_reported_together(tiny_model_factory, tmp_path):
    config = TrainConfig(steps=0, max_completion_length=4, rewards=("correctness", "int"))
    expected = ("invalid training settings: steps must be at least 1; max_completion_length must "
                "be at least 8; unknown reward int (choose from correctness, number, "
                "strict_format, soft_format, xml_count)")
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert caught.value.message == expected
    assert caught.value.hint == "fix the values in the train section or on the command line"
    with pytest.raises(ConfigError) as caught:  # train checks them before touching anything
        train(str(tiny_model_factory("llama")), ROWS, config, tmp_path / "adapter")
    assert caught.value.message == expected
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def prequantized(tiny_model_factory, tmp_path) -> Path:
    """The tiny llama dressed as an ``unsloth/...-bnb-4bit`` upload."""
    path = tmp_path / "tiny-bnb-4bit"
    shutil.copytree(tiny_model_factory("llama"), path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_prequantized_base_is_refused_by_train_and_merge(prequantized, straight, tmp_path):
    expected = (f"{prequantized} is stored already quantised (bitsandbytes); "
                "edgetune needs the 16-bit base")
    with pytest.raises(ModelError) as caught:
        hf.refuse_prequantized(prequantized)
    assert caught.value.message == expected
    assert "--base-bits 4" in caught.value.hint
    assert "not unsloth/Qwen2.5-3B-Instruct-bnb-4bit" in caught.value.hint

    with pytest.raises(ModelError, match=r"stored already quantised \(bitsandbytes\)"):
        train(str(prequantized), ROWS, GRPO, tmp_path / "adapter")
    assert not checkpoint_dir(tmp_path / "adapter").exists()

    # an adapter whose recorded base is the pre-quantised copy cannot be merged either
    adapter = dataclasses.replace(straight.adapter, base_model=str(prequantized))
    with pytest.raises(ModelError) as caught:
        merge(adapter, tmp_path / "merged")
    assert caught.value.message == expected
    assert "--base-bits 4" in caught.value.hint
    assert not (tmp_path / "merged").exists()


# --------------------------------------------------------------------------- SFT, then GRPO

def _write_cot(path: Path, n: int = 8) -> Path:
    """medical-o1-reasoning-SFT's layout: Question / Complex_CoT / Response."""
    path.write_text("".join(json.dumps({"Question": f"What is {i} plus {i * 3}?",
                                        "Complex_CoT": f"{i} + {i * 3} = {i * 4}",
                                        "Response": str(i * 4)}) + "\n" for i in range(n)))
    return path


def test_sft_then_grpo_continues_the_adapter(r1_base, tmp_path):
    data = load_sft(_write_cot(tmp_path / "cot.jsonl"))
    assert (data.format, len(data.examples), data.skipped) == ("cot", 8, 0)
    assert data.examples[3].messages[-1] == {"role": "assistant",
                                            "content": "<think>\n3 + 9 = 12\n</think>\n12"}

    sft_config = TrainConfig(method="sft", steps=3, sft_batch_size=2, max_seq_length=128,
                             answer_format="r1", checkpoint_every=0)
    sft = train(str(r1_base), data.examples, sft_config, tmp_path / "sft")
    assert Adapter.load(tmp_path / "sft") == sft
    assert (sft.method, sft.backend, sft.steps) == ("sft", "trl", 3)
    assert {k: sft.effective_config[k] for k in ("per_device_train_batch_size", "max_length",
                                                  "packing")} == {
        "per_device_train_batch_size": 2, "max_length": 128, "packing": False}
    sft_log = _log(tmp_path / "sft" / LOG_FILE)
    assert sft_log[0]["event"] == "config"
    assert _steps(sft_log) == [1, 2, 3]
    assert all(e["loss"] > 0 and math.isfinite(e["loss"]) for e in sft_log[1:])
    assert not any(e.get("event") == "warning" for e in sft_log)  # GRPO's health checks only

    grpo = train(str(r1_base), ROWS, dataclasses.replace(GRPO, steps=2, checkpoint_every=0),
                 tmp_path / "grpo", init_adapter=sft.path)
    assert (grpo.method, grpo.steps) == ("grpo", 2)
    assert _steps(_log(tmp_path / "grpo" / LOG_FILE)) == [1, 2]
    before, after = _weights(sft.path), _weights(grpo.path)
    assert sorted(before) == sorted(after)  # the same LoRA, continued: no new modules
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("lora_" in k for k in changed)
    config = json.loads((grpo.path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)


# --------------------------------------------------------------------------- CLI

def _run(*args) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _no_traceback(result: click.testing.Result) -> None:
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_sft_needs_data(tmp_path):
    result = _run("train", "--method", "sft", "--out", tmp_path / "sft")
    assert result.exit_code == 2
    assert "Error: --method sft needs --data (reasoning examples to imitate)" in result.stderr
    assert not (tmp_path / "sft").exists()


def test_cli_train_sft(tiny_model_factory, tmp_path):
    data, out = _write_cot(tmp_path / "cot.jsonl"), tmp_path / "sft"
    result = _run("train", "--method", "sft", "--data", data, "--base-model",
                  tiny_model_factory("llama"), "--steps", 2, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    _no_traceback(result)
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("adapter", "method", "backend", "steps")} == {
        "adapter": str(out), "method": "sft", "backend": "trl", "steps": 2}
    assert report["effective_config"] == Adapter.load(out).effective_config
    assert (report["effective_config"]["method"], report["effective_config"]["device"]) == (
        "sft", "cpu")
    assert _steps(_log(out / LOG_FILE)) == [1, 2]


def test_cli_train_resume_with_nothing_to_resume(tiny_model_factory, tmp_path):
    data, out = _write_cot(tmp_path / "cot.jsonl"), tmp_path / "sft"
    result = _run("train", "--method", "sft", "--data", data, "--base-model",
                  tiny_model_factory("llama"), "--out", out, "--resume")
    assert result.exit_code == 1
    _no_traceback(result)
    assert [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))] == [
        f"Error: nothing to resume: no complete checkpoint in {checkpoint_dir(out)}",
        "Hint: run without --resume to start training"]
    assert not out.exists()


# --------------------------------------------------------------------------- health

def test_constant_rewards_warn_through_on_note(tiny_model_factory, tmp_path):
    out = tmp_path / "adapter"
    notes = []
    # A random model never writes <reasoning>...</reasoning> <answer>...</answer>: strict_format
    # is 0 for every completion. 3 steps: the health window is max(3, min(10, 3 // 5)) = 3.
    config = TrainConfig(steps=3, num_generations=2, prompts_per_step=1, max_completion_length=8,
                         rewards=("strict_format",), checkpoint_every=0)
    train(str(tiny_model_factory("llama")), ROWS, config, out, on_note=notes.append)

    message = ("the format rewards (strict_format) have been 0 for 3 steps: the model never "
               "answers in the expected format (<reasoning>...</reasoning> then <answer>..."
               "</answer>), so its answers cannot be scored either. Fix it with the format warm "
               "start (--warm-start always) or SFT data (--sft-data), or a system prompt showing "
               "the format (--system-prompt-file).")
    assert f"warning (step 3): {message}" in notes
    warnings = [e for e in _log(out / LOG_FILE) if e.get("event") == "warning"]
    assert {"step": 3, "event": "warning", "code": "format_zero", "message": message} in warnings
    assert {"step": 3, "event": "warning", "code": "no_signal",
            "message": ("for 3 steps, at least 90% of prompt groups got the same reward for every "
                        "completion, so GRPO has nothing to learn from. Try a warm start with "
                        "--sft-data, more generations (--num-generations), a higher "
                        "--temperature, or easier data.")} in warnings
    # every warning in the log reached on_note, and nothing warned before the window was full
    assert sorted(f"warning (step {w['step']}): {w['message']}" for w in warnings) == sorted(
        n for n in notes if n.startswith("warning"))
    assert {w["step"] for w in warnings} == {3}


def test_cli_json_stdout_survives_libraries_that_print(tmp_path, monkeypatch):
    """Unsloth prints its banner with print(); on the GPU machine that broke `--json` (found by
    tests/test_gpu.py). Whatever a stage prints must land on stderr."""
    from click.testing import CliRunner

    import edgetune.training.trainer as train_module
    from edgetune.artifacts import Adapter
    from edgetune.cli import cli

    def noisy_train(base_model, rows, config, out, **_kw):
        print("==((====))==  Unsloth: Fast Llama patching.")
        out.mkdir(parents=True)
        return Adapter(path=out, base_model=base_model, method=config.method, backend="unsloth",
                       steps=config.steps)

    monkeypatch.setattr(train_module, "train", noisy_train)
    data = tmp_path / "cot.jsonl"
    data.write_text('{"Question": "1+1?", "Complex_CoT": "one and one", "Response": "2"}\n')
    base = tmp_path / "base"  # what train's preflight asks of a model folder; never loaded here
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"")
    result = CliRunner().invoke(cli, ["train", "--method", "sft", "--data", str(data), "--base-model",
                                      str(base), "--out", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "unsloth"
    assert "Unsloth: Fast Llama patching." in result.stderr
