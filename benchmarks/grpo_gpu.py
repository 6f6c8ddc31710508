"""GRPO training speed and memory on one GPU: Unsloth 4-bit / 16-bit vs plain TRL + PEFT.

Runs edgetune's own training code (``edgetune.training.trainer.train``) on random-weight models with the
exact shapes of Qwen2.5-1.5B and Qwen2.5-3B (random weights are fine for speed and memory; they
never emit EOS, so every completion runs to the length cap: the worst case). Every variant uses
the same batch settings: 8 generations x 256 new tokens per prompt, 1 prompt per micro-batch,
gradient accumulation 2 (16 completions per optimizer step), LoRA r=16 on all 7 projections.

    python benchmarks/grpo_gpu.py --models 1.5B,3B --out benchmarks/results/grpo_gpu.json

Each variant runs in its own process (Unsloth patches transformers and TRL on import, so the
TRL baseline must never share a process with it). Reported per run: completions per second
(completions per optimizer step / median step time after warm-up) and peak allocated VRAM.
``--models tiny`` runs the same code on a small model of the same vocabulary, for a smoke test.
"""

from __future__ import annotations

import argparse
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

QWEN_COMMON = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "vocab_size": 151936, "tie_word_embeddings": True, "bos_token_id": 151643,
    "eos_token_id": 151645, "use_sliding_window": False, "attention_dropout": 0.0,
    "initializer_range": 0.02, "torch_dtype": "bfloat16",
}
# Shapes from the published config.json of Qwen/Qwen2.5-1.5B-Instruct and Qwen/Qwen2.5-3B-Instruct.
SHAPES = {
    "1.5B": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2},
    "3B": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
           "num_attention_heads": 16, "num_key_value_heads": 2},
    "tiny": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}
# name -> (backend, base_bits, trainer overrides, environment, TrainConfig overrides).
# UNSLOTH_DECODE_CUDA_GRAPHS: "" is Unsloth's own default (graphs only inside its RL generation
# scope), "1" forces the graphed decode step, "0" forces the eager one. compile_generation: the
# TRL backend's static KV cache + CUDA-graphed decode (edgetune.training.runner.compile_generation); the
# TRL baseline runs with it off, i.e. with TRL's own defaults.
EAGER = {"compile_generation": False}
VARIANTS = {
    "trl": ("trl", 16, {}, {}, EAGER),
    "trl-compiled": ("trl", 16, {}, {}, {"compile_generation": True}),
    "trl-4bit-compiled": ("trl", 4, {}, {}, {"compile_generation": True}),
    "unsloth-16bit-compiled": ("unsloth", 16, {}, {"UNSLOTH_DECODE_CUDA_GRAPHS": "0"},
                               {"compile_generation": True}),
    "unsloth-16bit": ("unsloth", 16, {}, {"UNSLOTH_DECODE_CUDA_GRAPHS": ""}, {}),
    "unsloth-4bit": ("unsloth", 4, {}, {"UNSLOTH_DECODE_CUDA_GRAPHS": ""}, {}),
    "unsloth-16bit-eager-decode": ("unsloth", 16, {}, {"UNSLOTH_DECODE_CUDA_GRAPHS": "0"}, {}),
    "unsloth-16bit-graphs-forced": ("unsloth", 16, {}, {"UNSLOTH_DECODE_CUDA_GRAPHS": "1"}, {}),
    "unsloth-4bit-graphs-forced": ("unsloth", 4, {}, {"UNSLOTH_DECODE_CUDA_GRAPHS": "1"}, {}),
    "trl-continuous-batching": ("trl", 16, {"use_transformers_continuous_batching": True}, {}, EAGER),
    "trl-static-cache": ("trl", 16, {"cache_implementation": "static"}, {}, EAGER),
}
GENERATIONS, NEW_TOKENS, GA, LORA_R = 8, 256, 2, 16
SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


def build_model(name: str, directory: Path) -> Path:
    """A random-weight Qwen2.5-shaped model with a tokenizer over the full 151,936-token vocab."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from edgetune.tinymodel import CHATML_TEMPLATE

    path = directory / f"qwen2.5-{name}-random"
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return path
    vocab = {f"t{i}": i for i in range(QWEN_COMMON["vocab_size"])}
    vocab = {k: v for k, v in vocab.items() if v not in SPECIAL.values()} | SPECIAL | {"<unk>": 0}
    vocab.pop("t0", None)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIAL))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    config = AutoConfig.for_model(**{**QWEN_COMMON, **SHAPES[name]})
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    del model
    return path


def worker(args) -> dict:
    """One variant on one model, in this process."""
    backend, bits, overrides, _env, config_overrides = VARIANTS[args.variant]
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as edgetune does)
    import torch
    from transformers.generation.utils import GenerationMixin

    from edgetune.data import QARow

    # Time every generate() (synchronised), to show how much of a step generation takes.
    generate_times: list[float] = []
    original_generate = GenerationMixin.generate

    def timed_generate(self, *a, **kw):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            return original_generate(self, *a, **kw)
        finally:
            torch.cuda.synchronize()
            generate_times.append(time.perf_counter() - t0)

    if torch.cuda.is_available():
        GenerationMixin.generate = timed_generate
    from edgetune.training.config import TrainConfig
    from edgetune.training.trainer import train
    from edgetune.training.vram import ModelShape, estimate_vram

    cuda = torch.cuda.is_available()  # False only in a CPU smoke test (--models tiny)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps = args.warmup + args.steps
    rows = [QARow(question=f"What is {i} plus {i + 7}?", answer=str(2 * i + 7), reasoning="", source=f"bench:{i}") for i in range(64)]
    config = TrainConfig(steps=steps, num_generations=GENERATIONS, prompts_per_step=1,
                         gradient_accumulation_steps=GA, max_prompt_length=64,
                         max_completion_length=NEW_TOKENS, learning_rate=5e-6, lora_r=LORA_R,
                         lora_alpha=LORA_R, backend=backend, base_bits=bits, checkpoint_every=0,
                         **config_overrides)
    stamps: list[float] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = train(str(args.model_dir), rows, config, Path(tmp) / "adapter",
                        on_step=lambda s: stamps.append(time.perf_counter()),
                        on_note=notes.append, trainer_overrides=overrides)
    durations = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup - 1:] if args.warmup else []
    eff = adapter.effective_config
    completions = eff["per_device_train_batch_size"] * eff["gradient_accumulation_steps"]
    median = statistics.median(durations)
    estimate = estimate_vram(ModelShape.from_dir(args.model_dir), base_bits=bits, lora_r=LORA_R,
                             num_generations=GENERATIONS, prompts_per_step=1, max_prompt_length=64,
                             max_completion_length=NEW_TOKENS)
    return {
        "variant": args.variant, "backend": backend, "base_bits": bits,
        "completions_per_step": completions, "median_step_s": round(median, 3),
        "step_times_s": [round(d, 3) for d in durations],
        "completions_per_s": round(completions / median, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "estimated_peak_gib": round(estimate.total_gib, 3),
        "generate_s": [round(t, 3) for t in generate_times],
        "effective_config": eff, "trainer_overrides": overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="1.5B,3B")
    parser.add_argument("--variants", default="trl,unsloth-16bit,unsloth-4bit")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_gpu.json")
    parser.add_argument("--model-cache", type=Path, default=Path(tempfile.gettempdir()) / "edgetune-bench")
    parser.add_argument("--default-variant", default="unsloth-16bit-graphs-forced",
                        help="edgetune's default GPU path (what `--backend auto` does)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.result.write_text(json.dumps(worker(args)))
        return

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    # The GPU machine gets a copy of the tree whose .git may lag behind: the caller says which
    # commit it sent (EDGETUNE_COMMIT); git is the fallback for local runs.
    commit = os.environ.get("EDGETUNE_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    for model in args.models.split(","):
        model_dir = build_model(model, args.model_cache)
        for variant in args.variants.split(","):
            env = {**os.environ, **VARIANTS[variant][3], "PYTHONUNBUFFERED": "1"}
            with tempfile.NamedTemporaryFile(suffix=".json") as result:
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--worker", "--variant", variant,
                                       "--model-dir", str(model_dir), "--result", result.name,
                                       "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                      env=env, capture_output=True, text=True)
                text = Path(result.name).read_text()
            run = {"model": model, "variant": variant, "gpu": gpu, "commit": commit,
                   "wall_s": round(time.perf_counter() - started, 1)}
            if proc.returncode == 0 and text:
                run |= json.loads(text)
                run["is_default"] = variant == args.default_variant
                run["is_trl_baseline"] = variant == "trl"
            else:
                run |= {"backend": VARIANTS[variant][0], "base_bits": VARIANTS[variant][1],
                        "error": (proc.stderr or proc.stdout)[-1500:], "is_default": False,
                        "is_trl_baseline": False}
            runs = [r for r in runs if (r["model"], r["variant"]) != (model, variant)] + [run]
            print(json.dumps({k: run.get(k) for k in ("model", "variant", "completions_per_s",
                                                      "peak_allocated_gib", "estimated_peak_gib",
                                                      "wall_s", "error")}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
