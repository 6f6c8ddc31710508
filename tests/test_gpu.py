"""GPU training through Unsloth (and TRL on CUDA). Marked gpu: skipped without CUDA.

Run on the GPU machine (see benchmarks/README.md for carrying the wheels):
    pytest -m gpu -v tests/test_gpu.py
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors import safe_open

if torch.cuda.is_available() and not os.environ.get("EDGETUNE_NO_UNSLOTH"):
    import unsloth  # noqa: F401  (before transformers, which the tiny-model fixtures import)

from edgetune.artifacts import Adapter
from edgetune.data import QARow
from edgetune.training.checkpoints import checkpoint_dir
from edgetune.training.config import TrainConfig, TrainingInterrupted
from edgetune.training.trainer import train

pytestmark = pytest.mark.gpu

ROWS = [QARow(question=f"What is {i} plus {i + 3}?", answer=str(2 * i + 3), reasoning="",
              source=f"t:{i}") for i in range(24)]
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "training_log.jsonl",
                 "artifact.json"}


def _config(**kw) -> TrainConfig:
    base = dict(steps=3, num_generations=4, prompts_per_step=2, max_completion_length=16,
                checkpoint_every=0, learning_rate=5e-4)
    return TrainConfig(**{**base, **kw})


def _tensors(adapter_dir):
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).float().cpu() for k in f.keys()}


def _layout(adapter_dir):
    names = {p.name for p in adapter_dir.iterdir()} - {"README.md"}
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    keys = {k: tuple(v.shape) for k, v in _tensors(adapter_dir).items()}
    return names, config["r"], sorted(config["target_modules"]), keys


def _trl_reference(base, out):
    """A TRL + PEFT run on the same GPU, in its own process: Unsloth, once imported, replaces
    TRL's trainers in-process (the CLI never mixes them; this test must not either)."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, '.');"
        "from tests.test_gpu import ROWS, _config; from edgetune.training.trainer import train;"
        f"train({str(base)!r}, ROWS, _config(backend='trl'), Path({str(out)!r}))")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "EDGETUNE_NO_UNSLOTH": "1"})
    return out


@pytest.mark.parametrize("bits", [16, 4])
def test_unsloth_grpo_gives_the_same_layout_as_trl(tiny_model_factory, tmp_path, bits):
    base = tiny_model_factory("llama")
    unsloth = train(str(base), ROWS, _config(backend="unsloth", base_bits=bits), tmp_path / "u")
    trl = Adapter.load(_trl_reference(base, tmp_path / "t"))
    assert unsloth.backend == "unsloth" and trl.backend == "trl"
    assert trl.effective_config["device"] == "cuda"
    assert unsloth.effective_config["base_bits"] == bits
    assert unsloth.effective_config["device"] == "cuda"
    assert ADAPTER_FILES <= {p.name for p in unsloth.path.iterdir()}
    assert _layout(unsloth.path) == _layout(trl.path)
    log = [json.loads(line) for line in (unsloth.path / "training_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "config" and log[0]["backend"] == "unsloth"
    assert [e["step"] for e in log[1:] if "reward" in e] == [1, 2, 3]
    assert any(k.startswith("rewards/correctness") for k in log[1])


def test_merge_of_a_4bit_run_uses_the_16bit_base(tiny_model_factory, tmp_path):
    from edgetune.merge import merge

    base = tiny_model_factory("llama")
    adapter = train(str(base), ROWS, _config(backend="unsloth", base_bits=4, steps=4), tmp_path / "a")
    merged = merge(adapter, tmp_path / "m")
    config = json.loads((merged.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert merged.max_weight_delta > 0


def test_unsloth_sft_then_grpo(tiny_model_factory, tmp_path):
    from edgetune.sft_data import load_sft

    data = tmp_path / "cot.jsonl"
    data.write_text("".join(json.dumps({"Question": f"What is {i} plus 1?", "Complex_CoT": f"{i} + 1",
                                        "Response": str(i + 1)}) + "\n" for i in range(16)))
    base = tiny_model_factory("llama")
    examples = load_sft(data).examples
    sft = train(str(base), examples, _config(backend="unsloth", method="sft", steps=4), tmp_path / "s")
    assert sft.method == "sft" and sft.backend == "unsloth"
    grpo = train(str(base), ROWS, _config(backend="unsloth", answer_format="r1"), tmp_path / "g",
                 init_adapter=sft.path)
    before, after = _tensors(sft.path), _tensors(grpo.path)
    assert before.keys() == after.keys()
    assert any(not before[k].equal(after[k]) for k in before)


def test_unsloth_ctrl_c_then_resume(tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama")
    config = _config(backend="unsloth", steps=4, checkpoint_every=2)

    def interrupt(step):
        if step.step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stopped:
        train(str(base), ROWS, config, tmp_path / "a", on_step=interrupt)
    assert "checkpoint" in stopped.value.message
    assert (checkpoint_dir(tmp_path / "a") / "checkpoint-1" / "optimizer.pt").is_file()
    adapter = train(str(base), ROWS, config, tmp_path / "a", resume=True)
    entries = [json.loads(line) for line in (adapter.path / "training_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "event" not in e] == [1, 2, 3, 4]
    assert Adapter.load(adapter.path).steps == 4


def test_vram_check_refuses_what_cannot_fit(tiny_model_factory, tmp_path):
    from edgetune.errors import ConfigError
    from edgetune.training.vram import gpu_memory

    free, total = gpu_memory()
    assert 0 < free <= total
    base = tiny_model_factory("llama")
    huge = _config(backend="unsloth", base_bits=4, num_generations=4096, prompts_per_step=64,
                   max_completion_length=32768)
    with pytest.raises(ConfigError) as refused:
        train(str(base), ROWS, huge, tmp_path / "x")
    assert "--num-generations" in refused.value.hint


def test_auto_backend_follows_the_benchmark(tiny_model_factory):
    """16-bit fits: TRL with compiled generation (fastest); 4-bit asked: Unsloth (least memory)."""
    from edgetune.training.backends import TrlBackend, UnslothBackend, select_backend

    base = tiny_model_factory("llama")
    assert isinstance(select_backend("auto", base, _config()), TrlBackend)
    assert isinstance(select_backend("auto", base, _config(base_bits=4)), UnslothBackend)


def test_demo_build_on_gpu_reaches_a_verified_bundle(tmp_path):
    """The CPU demo's pipeline on the GPU's default path: TRL GRPO with a CUDA-graphed decode,
    then merge, GGUF, quants, a signed bundle. The real CLI in its own process, as a user runs
    it (this test module has imported Unsloth, which replaces TRL's trainers in-process)."""
    import subprocess
    import sys

    from edgetune.bundle import verify_bundle

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "edgetune.cli", "build", "--target", "phone",
                          "--steps", "8", "--out", str(out), "--json"],
                         capture_output=True, text=True, env={**os.environ, "EDGETUNE_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads(run.stdout)
    manifest = json.loads((out / "bundle" / "edgetune.json").read_text())
    effective = manifest["training"]["effective_config"]
    assert manifest["training"]["backend"] == "trl"
    assert effective["device"] == "cuda" and effective["compiled_generation"] is True
    log = [json.loads(line) for line in (out / "adapter" / "training_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "reward" in e] == list(range(1, 9))
    verified = verify_bundle(out / "bundle", payload["public_key"])
    assert verified.bundle_id == payload["bundle_id"]
