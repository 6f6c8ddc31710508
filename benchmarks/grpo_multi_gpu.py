"""GRPO training speed on 1 vs 2 GPUs: edgetune's `--gpus N` (accelerate, data parallel).

Same models and batch settings as grpo_gpu.py (random-weight Qwen2.5-1.5B / 3B shapes, 8
generations x 256 new tokens per prompt, 1 prompt per micro-batch per GPU, gradient accumulation
2, LoRA r=16, TRL backend with compiled generation: edgetune's default GPU path). Each GPU takes
its own prompts, so 2 GPUs produce twice the completions per optimizer step; the question is how
much longer a step takes.

    python benchmarks/grpo_multi_gpu.py --models 1.5B,3B --gpus 1,2

Each run is a fresh ``edgetune.training.trainer.train(config.gpus=N)`` in its own process; every training
process writes its step end times and peak allocated memory (``EDGETUNE_TRAIN_STATS``).
Completions per second = completions per optimizer step / median step time after warm-up
(the first steps capture CUDA graphs). Results: benchmarks/results/grpo_multi_gpu.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from grpo_gpu import GA, GENERATIONS, LORA_R, NEW_TOKENS, build_model  # noqa: E402


def worker(args) -> dict:
    """One model on ``args.gpus`` GPUs, from this process (which launches the others)."""
    from edgetune.data import QARow
    from edgetune.training.config import TrainConfig
    from edgetune.training.runner import STATS_ENV
    from edgetune.training.trainer import train

    rows = [QARow(question=f"What is {i} plus {i + 7}?", answer=str(2 * i + 7), reasoning="",
                  source=f"bench:{i}") for i in range(256)]
    config = TrainConfig(steps=args.warmup + args.steps, num_generations=GENERATIONS,
                         prompts_per_step=1, gradient_accumulation_steps=GA, max_prompt_length=64,
                         max_completion_length=NEW_TOKENS, learning_rate=5e-6, lora_r=LORA_R,
                         lora_alpha=LORA_R, backend="trl", base_bits=16, checkpoint_every=0,
                         gpus=args.gpus)
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats"
        os.environ[STATS_ENV] = str(stats)
        adapter = train(str(args.model_dir), rows, config, Path(tmp) / "adapter",
                        on_note=notes.append)
        ranks = [json.loads(Path(p).read_text()) for p in sorted(glob.glob(f"{stats}.rank*.json"))]
        layout = sorted(p.name for p in adapter.path.iterdir())
    ends = ranks[0]["step_ends"]
    durations = [b - a for a, b in zip(ends, ends[1:])][args.warmup - 1:]
    eff = adapter.effective_config
    completions = (eff["per_device_train_batch_size"] * eff["gradient_accumulation_steps"]
                   * args.gpus)
    median = statistics.median(durations)
    return {
        "gpus": args.gpus, "processes": len(ranks),
        "completions_per_step": completions, "median_step_s": round(median, 3),
        "step_times_s": [round(d, 3) for d in durations],
        "completions_per_s": round(completions / median, 3),
        "peak_allocated_gib_per_gpu": [round(r["peak_allocated_bytes"] / 2**30, 3)
                                       for r in ranks if r["peak_allocated_bytes"] is not None],
        "adapter_files": layout, "effective_config": eff,
        "notes": [n for n in notes if "GPUs" in n or "estimated" in n],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="1.5B,3B")
    parser.add_argument("--gpus", default="1,2", help="GPU counts to compare")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "grpo_multi_gpu.json")
    parser.add_argument("--model-cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "edgetune-bench")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.gpus = int(args.gpus)
        args.result.write_text(json.dumps(worker(args)))
        return

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    available = torch.cuda.device_count()
    commit = os.environ.get("EDGETUNE_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    for model in args.models.split(","):
        model_dir = build_model(model, args.model_cache)
        for gpus in (int(g) for g in args.gpus.split(",")):
            run = {"model": model, "gpus": gpus, "gpu": gpu, "gpus_on_machine": available,
                   "commit": commit}
            with tempfile.NamedTemporaryFile(suffix=".json") as result:
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--worker", "--gpus", str(gpus),
                                       "--model-dir", str(model_dir), "--result", result.name,
                                       "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                      capture_output=True, text=True)
                text = Path(result.name).read_text()
            run["wall_s"] = round(time.perf_counter() - started, 1)
            if proc.returncode == 0 and text:
                run |= json.loads(text)
            else:
                run["error"] = (proc.stderr or proc.stdout)[-3000:]
            runs = [r for r in runs if (r["model"], r["gpus"]) != (model, gpus)] + [run]
            print(json.dumps({k: run.get(k) for k in ("model", "gpus", "completions_per_s",
                                                      "median_step_s", "peak_allocated_gib_per_gpu",
                                                      "wall_s", "error")}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(runs, indent=1) + "\n")
    for model in args.models.split(","):
        speed = {r["gpus"]: r.get("completions_per_s") for r in runs if r["model"] == model}
        if speed.get(1) and speed.get(2):
            print(f"{model}: 2 GPUs / 1 GPU = {speed[2] / speed[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
