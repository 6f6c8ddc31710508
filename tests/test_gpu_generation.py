"""GRPO generation under bf16 autocast (edgetune.training.runner.autocast_generation), on CUDA.
Marked gpu: skipped without CUDA.

Each check runs in its own process without Unsloth (tests/test_gpu.py imports it, and it replaces
TRL's trainers in-process). Run on the GPU machine:
    pytest -m gpu -v tests/test_gpu_generation.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


def _in_process_without_unsloth(code: str) -> dict:
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "EDGETUNE_NO_UNSLOTH": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_generation_under_autocast_matches_fp32_adapters(tiny_model_factory):
    """The same LoRA model (B non-zero), greedy: bf16 autocast gives the same tokens as the fp32
    adapters for most of the sequence and logits within bf16 rounding."""
    base = tiny_model_factory("qwen2")
    code = f"""
import json, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from edgetune.training.runner import autocast_generation
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained({str(base)!r}, dtype=torch.bfloat16).cuda()
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear",
                                         init_lora_weights=False))
assert next(p for n, p in model.named_parameters() if "lora_A" in n).dtype == torch.float32
ids = torch.tensor([[1, 5, 9, 13, 17, 21]], device="cuda")
with torch.no_grad():
    fp32 = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False,
                          output_logits=True, return_dict_in_generate=True)
    trainer = type("T", (), {{"model": model}})()
    autocast_generation(trainer)
    bf16 = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False,
                          output_logits=True, return_dict_in_generate=True)
a, b = fp32.sequences[0, 6:].tolist(), bf16.sequences[0, 6:].tolist()
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
diff = (fp32.logits[0].float() - bf16.logits[0].float()).abs().max().item()
scale = fp32.logits[0].float().abs().max().item()
print(json.dumps({{"same_prefix": first, "n": len(a), "max_diff": diff, "scale": scale}}))
"""
    out = _in_process_without_unsloth(code)
    assert out["same_prefix"] >= out["n"] // 2, out  # greedy ties may flip later on
    assert out["max_diff"] <= 0.05 * out["scale"], out


def test_grpo_with_autocast_generation_trains_like_without(tiny_model_factory, tmp_path):
    """Same seed, TRL backend, compiled decode: with and without autocast the first step's
    rewards (the LoRA B matrices start at zero, so the models agree) match within sampling
    tolerance, every loss is finite, and the run records which path it took."""
    base = tiny_model_factory("qwen2")
    results = {}
    for on in (False, True):
        out = tmp_path / f"autocast-{on}"
        code = f"""
import json, sys; from pathlib import Path; sys.path.insert(0, '.')
from tests.test_gpu import ROWS, _config
from edgetune.training.trainer import train
adapter = train({str(base)!r}, ROWS, _config(backend='trl', autocast_generation={on}, seed=7),
                Path({str(out)!r}))
rows = [json.loads(l) for l in (adapter.path / 'training_log.jsonl').read_text().splitlines()]
print(json.dumps(rows))
"""
        results[on] = _in_process_without_unsloth(code)
    first = {}
    for on, rows in results.items():
        config = next(r for r in rows if r.get("event") == "config")
        assert config["autocast_generation"] is on and config["compiled_generation"], config
        steps = [r for r in rows if "event" not in r]
        assert [r["step"] for r in steps] == [1, 2, 3], rows
        assert all(abs(r["loss"]) < 1e3 and r["grad_norm"] == r["grad_norm"] for r in steps)
        first[on] = steps[0]
    assert abs(first[False]["reward"] - first[True]["reward"]) <= 0.5, first


def test_ctrl_c_then_resume_with_autocast_generation(tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama")
    code = f"""
import json, os, signal, sys; from pathlib import Path; sys.path.insert(0, '.')
from tests.test_gpu import ROWS, _config
from edgetune.artifacts import Adapter
from edgetune.training.config import TrainingInterrupted
from edgetune.training.trainer import train
config = _config(backend='trl', steps=4, checkpoint_every=2, autocast_generation=True)
def interrupt(step):
    if step.step == 1:
        os.kill(os.getpid(), signal.SIGINT)
out = Path({str(tmp_path / 'a')!r})
try:
    train({str(base)!r}, ROWS, config, out, on_step=interrupt)
    raise SystemExit("not interrupted")
except TrainingInterrupted:
    pass
adapter = train({str(base)!r}, ROWS, config, out, resume=True)
rows = [json.loads(l) for l in (adapter.path / 'training_log.jsonl').read_text().splitlines()]
print(json.dumps({{"steps": [r['step'] for r in rows if 'event' not in r],
                   "done": Adapter.load(adapter.path).steps}}))
"""
    out = _in_process_without_unsloth(code)
    assert out == {"steps": [1, 2, 3, 4], "done": 4}, out
