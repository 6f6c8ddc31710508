"""Training on two GPUs (edgetune.training.distributed through accelerate launch). Marked gpu: skipped
without CUDA, and skipped with fewer than two GPUs.

Run on a machine with two GPUs (benchmarks/README.md says how the wheels travel):
    pytest -m gpu -v tests/test_gpu_multi.py
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from edgetune.training import distributed
from edgetune.data import QARow
from edgetune.training.checkpoints import checkpoint_dir
from edgetune.training.config import LOG_FILE, TrainConfig, TrainingInterrupted
from edgetune.training.trainer import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")]

ROWS = [QARow(question=f"What is {i} plus {i + 3}?", answer=str(2 * i + 3), reasoning="",
              source=f"t:{i}") for i in range(32)]
CONFIG = TrainConfig(steps=4, num_generations=4, prompts_per_step=2, max_completion_length=16,
                     checkpoint_every=2, learning_rate=5e-4, backend="trl", gpus=2)
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "training_log.jsonl",
                 "artifact.json", "README.md"}


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _steps(log):
    return [e["step"] for e in log if "event" not in e and e.get("step")]


def test_two_gpus_through_accelerate_leave_the_one_gpu_layout(tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama")
    notes, steps = [], []
    adapter = train(str(base), ROWS, CONFIG, tmp_path / "two", on_note=notes.append,
                    on_step=lambda s: steps.append(s.step))
    assert {p.name for p in adapter.path.iterdir()} == ADAPTER_FILES
    assert steps == [1, 2, 3, 4]
    log = _log(adapter.path / LOG_FILE)
    assert _steps(log) == [1, 2, 3, 4]
    config = next(e for e in log if e.get("event") == "config")
    assert (config["gpus"], config["distributed"], config["device"]) == (2, "ddp", "cuda")
    assert config["compiled_generation"] is True
    assert any("2 GPUs, ddp" in n for n in notes)
    assert not checkpoint_dir(adapter.path).exists()


def test_ctrl_c_on_two_gpus_then_resume_on_one(tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama")
    out = tmp_path / "adapter"
    config = TrainConfig(**{**CONFIG.__dict__, "steps": 2000, "checkpoint_every": 5000})
    launch = checkpoint_dir(out) / distributed.LAUNCH_DIR
    stepped = threading.Event()

    def interrupt() -> None:
        stepped.wait(timeout=600)
        while len(list(launch.glob("rank*.pid"))) < 2:
            time.sleep(0.1)
        distributed._signal_workers(launch, distributed.signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(TrainingInterrupted) as caught:
        train(str(base), ROWS, config, out, on_step=lambda s: stepped.set())
    stopped = int(caught.value.message.split("training stopped at step ")[1].split(";")[0])
    assert 1 <= stopped < 2000
    assert (checkpoint_dir(out) / f"checkpoint-{stopped}" / "optimizer.pt").is_file()
    resumed = train(str(base), ROWS, TrainConfig(**{**config.__dict__, "steps": stopped + 2,
                                                    "gpus": 1}), out, resume=True)
    assert _steps(_log(resumed.path / LOG_FILE)) == list(range(1, stopped + 3))
