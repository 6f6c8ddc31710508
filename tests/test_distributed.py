"""Multi-GPU training (edgetune.training.distributed): plans and refusals, the accelerate config, and the
real multi-process path on CPU.

CI has no GPU, and ``accelerate launch`` starts several processes only for GPUs (its multi-CPU
mode needs MPI), so the end-to-end tests start the same training processes with ``torchrun``
(what accelerate's launcher runs underneath): two real processes train with gloo, exchange
gradients, agree on Ctrl-C, and the parent follows, collects and resumes them exactly as it does
on GPUs. The GPU run itself is benchmarks/grpo_multi_gpu.py (results committed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgetune.training import distributed
from edgetune.cli import cli
from edgetune.data import QARow
from edgetune.training.distributed import LaunchPlan, accelerate_config, plan_launch
from edgetune.errors import ConfigError
from edgetune.training.checkpoints import checkpoint_dir
from edgetune.training.config import LOG_FILE, TrainConfig, TrainingInterrupted
from edgetune.training.trainer import train

ROWS = tuple(QARow(question=f"What is {i} plus {i * 3}?", answer=str(i * 4), reasoning=None,
                   source=f"qa.jsonl:{i}") for i in range(1, 9))
GRPO = TrainConfig(steps=3, num_generations=4, prompts_per_step=1, max_completion_length=16,
                   answer_format="r1", checkpoint_every=0, gpus=2)


# --------------------------------------------------------------------------- plans, refusals

def test_data_parallel_when_the_base_fits_one_gpu():
    plan = plan_launch(GRPO, backend="auto", available=2, fits_one_gpu=True)
    assert (plan.gpus, plan.strategy, plan.base_bits, plan.mixed_precision) == (2, "ddp", None, "bf16")


def test_unsloth_is_refused_with_the_alternative_named():
    with pytest.raises(ConfigError) as caught:
        plan_launch(GRPO, backend="unsloth", available=2, fits_one_gpu=True)
    assert caught.value.message == "--gpus 2: the Unsloth backend trains on one GPU only"
    assert "--backend trl" in caught.value.hint and "--gpus 1" in caught.value.hint


def test_no_gpu_and_too_few_gpus_are_refused():
    with pytest.raises(ConfigError, match="no NVIDIA GPU was found"):
        plan_launch(GRPO, backend="trl", available=0, fits_one_gpu=None)
    with pytest.raises(ConfigError) as caught:
        plan_launch(dataclasses.replace(GRPO, gpus=4), backend="trl", available=2, fits_one_gpu=True)
    assert caught.value.message == "--gpus 4: this machine has 2 GPU(s)"
    assert "--gpus 2" in caught.value.hint


def test_a_base_too_big_for_one_gpu():
    # 16 bits asked and no DeepSpeed: refused, naming both ways out.
    with pytest.raises(ConfigError) as caught:
        plan_launch(dataclasses.replace(GRPO, base_bits=16), backend="trl", available=2,
                    fits_one_gpu=False, deepspeed=False)
    assert "needs DeepSpeed (ZeRO stage 3)" in caught.value.message
    assert "pip install deepspeed" in caught.value.hint and "--base-bits 4" in caught.value.hint
    # Nothing asked: a 4-bit base on every GPU, as one GPU would do.
    plan = plan_launch(GRPO, backend="auto", available=2, fits_one_gpu=False, deepspeed=False)
    assert (plan.strategy, plan.base_bits) == ("ddp", 4)
    assert "pip install deepspeed" in plan.reason
    # With DeepSpeed: the 16-bit base split across the GPUs.
    plan = plan_launch(GRPO, backend="trl", available=2, fits_one_gpu=False, deepspeed=True)
    assert (plan.strategy, plan.base_bits) == ("zero3", 16)
    with pytest.raises(ConfigError, match="compile_generation cannot be used"):
        plan_launch(dataclasses.replace(GRPO, compile_generation=True), backend="trl",
                    available=2, fits_one_gpu=False, deepspeed=True)


def test_cli_refuses_gpus_on_this_machine_without_a_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--gpus", "2", "--steps", "1",
                                      "--out", str(tmp_path / "a")])
    assert result.exit_code != 0
    assert "--gpus 2: no NVIDIA GPU was found on this machine" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "a").exists()


def test_gpus_in_the_project_file_and_its_check(tmp_path):
    from edgetune.project.load import load_project

    good = tmp_path / "edgetune.yaml"
    good.write_text("project:\n  name: t\ntrain:\n  gpus: 2\n")
    assert load_project(good).project.train.gpus == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("project:\n  name: t\ntrain:\n  gpus: 0\n")
    with pytest.raises(ConfigError, match="4: train.gpus"):
        load_project(bad)


# --------------------------------------------------------------------------- accelerate's config

def test_ddp_config_is_one_accelerate_accepts(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    plan = LaunchPlan(2, "ddp", None, "bf16", "test")
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(plan, 29555)))
    loaded = load_config_from_file(str(path))
    assert (loaded.distributed_type, loaded.num_processes, loaded.mixed_precision,
            loaded.main_process_port) == ("MULTI_GPU", 2, "bf16", 29555)
    assert loaded.deepspeed_config in ({}, None)


def test_zero3_config(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(LaunchPlan(4, "zero3", 16, "bf16", "t"), 1)))
    loaded = load_config_from_file(str(path))
    assert (loaded.distributed_type, loaded.num_processes) == ("DEEPSPEED", 4)
    assert loaded.deepspeed_config["zero_stage"] == 3


def test_launch_command_runs_our_worker_module():
    command = distributed.launch_command(Path("c.yaml"), Path("s.json"))
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:] == ["--config_file", "c.yaml", "-m", "edgetune.training.worker", "s.json"]


# --------------------------------------------------------------------------- two real processes

@pytest.fixture
def two_processes_on_cpu(monkeypatch):
    """Plan 2 processes on this CPU and start them with torchrun instead of accelerate launch."""
    monkeypatch.setattr(distributed, "plan_for", lambda config, base, on_note: LaunchPlan(
        config.gpus, "ddp", config.base_bits, "no", "two CPU processes (test)"))

    def torchrun(config_file: Path, spec_file: Path) -> list[str]:
        port = yaml.safe_load(config_file.read_text())["main_process_port"]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(port), "-m", "edgetune.training.worker", str(spec_file)]

    monkeypatch.setattr(distributed, "launch_command", torchrun)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _steps(log: list[dict]) -> list[int]:
    return [e["step"] for e in log if "event" not in e and e.get("step")]


@pytest.mark.slow
def test_two_processes_leave_the_one_gpu_layout(two_processes_on_cpu, tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama")
    steps, notes = [], []
    adapter = train(str(base), ROWS, GRPO, tmp_path / "two", on_note=notes.append,
                    on_step=lambda s: steps.append(s.step))
    one = train(str(base), ROWS, dataclasses.replace(GRPO, gpus=1), tmp_path / "one")

    assert sorted(p.name for p in adapter.path.iterdir()) == sorted(p.name for p in one.path.iterdir())
    assert not checkpoint_dir(adapter.path).exists()
    assert steps == [1, 2, 3]  # progress followed from process 0's log
    assert any("2 GPUs, ddp" in n for n in notes)
    log = _log(adapter.path / LOG_FILE)
    assert _steps(log) == [1, 2, 3]  # process 0 alone writes the log: each step once
    config = [e for e in log if e.get("event") == "config"]
    assert len(config) == 1 and (config[0]["gpus"], config[0]["distributed"]) == (2, "ddp")
    assert (adapter.effective_config["gpus"], adapter.backend) == (2, "trl")
    from safetensors.torch import load_file

    two_w, one_w = (load_file(a.path / "adapter_model.safetensors") for a in (adapter, one))
    assert sorted(two_w) == sorted(one_w)


@pytest.mark.slow
def test_ctrl_c_stops_every_process_at_one_step_and_resume_on_one_gpu(
        two_processes_on_cpu, tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama")
    out = tmp_path / "adapter"
    # Far more steps than it takes to stop: a fast machine must not finish before the signal.
    config = dataclasses.replace(GRPO, steps=2000, checkpoint_every=5000)
    launch = checkpoint_dir(out) / distributed.LAUNCH_DIR
    stepped = threading.Event()

    def interrupt_after_first_step() -> None:
        stepped.wait(timeout=300)
        while len(list(launch.glob("rank*.pid"))) < 2:
            time.sleep(0.1)
        distributed._signal_workers(launch, distributed.signal.SIGINT)

    threading.Thread(target=interrupt_after_first_step, daemon=True).start()
    with pytest.raises(TrainingInterrupted) as caught:
        train(str(base), ROWS, config, out, on_step=lambda s: stepped.set())
    assert "checkpoint saved in" in caught.value.message
    stopped_at = int(caught.value.message.split("training stopped at step ")[1].split(";")[0])
    assert 1 <= stopped_at < 2000
    saved = checkpoint_dir(out) / f"checkpoint-{stopped_at}"
    assert (saved / "optimizer.pt").is_file()  # both processes stopped at the same step

    resumed = train(str(base), ROWS, dataclasses.replace(config, steps=stopped_at + 2, gpus=1),
                    out, resume=True)
    assert _steps(_log(resumed.path / LOG_FILE)) == list(range(1, stopped_at + 3))
    assert resumed.effective_config.get("gpus") is None  # one process: the plain layout


@pytest.mark.slow
def test_a_port_taken_before_the_processes_bind_it_means_a_new_launch(
        two_processes_on_cpu, tiny_model_factory, tmp_path, monkeypatch):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]  # the first launch gets a port someone else holds
    real_free_port = distributed.free_port
    monkeypatch.setattr(distributed, "free_port", lambda: ports.pop() if ports else real_free_port())
    notes = []
    try:
        adapter = train(str(tiny_model_factory("llama")), ROWS, dataclasses.replace(GRPO, steps=1),
                        tmp_path / "a", on_note=notes.append)
    finally:
        taken.close()
    assert any("port for the training processes was taken" in n for n in notes)
    assert _steps(_log(adapter.path / LOG_FILE)) == [1]
