"""GRPO training speed and memory on one GPU: candidates side by side with TRL's defaults.

Runs edgetune's own training code (``edgetune.training.trainer.train``) on random-weight models with the
exact shapes of Qwen2.5-1.5B and Qwen2.5-3B. Every variant uses the same batch settings: 8
generations x 256 new tokens per prompt, 1 prompt per micro-batch, gradient accumulation 2 (16
completions per optimizer step), LoRA r=16 on all 7 projections. Two scenarios: random weights
never emit EOS, so every completion runs to the cap (the worst case, ``cap``); ``VARIANT@eos``
runs the same model with its EOS logit raised so completions stop after a median of ~120 of 256
tokens with a wide spread (``benchmarks/eos_model.py``).

    python benchmarks/grpo_gpu.py --models 1.5B --variants trl,trl-compiled,trl-compiled@eos \
        --rounds 4 --steps 2 --warmup 2 --time-budget 480 --out /tmp/grpo_gpu.json

The baseline (``trl``: TRL + PEFT defaults) runs in the same invocation as every candidate,
interleaved: each round runs every variant once (A B C A B C ...), each variant in its own process
(Unsloth patches transformers and TRL on import). By default the processes stay alive and take
turns, so model loading and decode compilation are paid once (``--fresh-processes``: a new
process per variant per round). Ratios are taken only between runs of one invocation; a variant
whose completions/s moved by 5% or more over rounds or steps gets ``spread_ok: false``. Results
are rewritten (atomically) after every run, so a killed invocation still leaves its rounds; a
``--time-budget`` stops starting rounds that would not fit. ``--models tiny`` (with small
``--new-tokens``) runs the same code on the CPU as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from grpo_rounds import CAP, EOS, Channel, Invocation, RoundBudget, parse_variant  # noqa: E402

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
# autocast_generation: bf16 autocast around generate (edgetune.training.runner.autocast_generation,
# on by default since 3d6c8d3's profile); off in the variants that stand for the paths before it.
EAGER = {"compile_generation": False, "autocast_generation": False}
COMPILED = {"compile_generation": True, "autocast_generation": False}
VARIANTS = {
    "trl": ("trl", 16, {}, {}, EAGER),
    "trl-compiled": ("trl", 16, {}, {}, COMPILED),
    # Today's default TRL path on CUDA: compiled decode + LoRA in bf16 while generating.
    "trl-compiled-bf16": ("trl", 16, {}, {}, {"compile_generation": True,
                                               "autocast_generation": True}),
    "trl-4bit-compiled-bf16": ("trl", 4, {}, {}, {"compile_generation": True,
                                                  "autocast_generation": True}),
    # transformers' continuous batching (paged attention): finished sequences leave the batch,
    # so it can only win where completions end at EOS (the @eos scenario).
    "trl-cb": ("trl", 16, {"use_transformers_continuous_batching": True}, {}, EAGER),
    "trl-4bit-compiled": ("trl", 4, {}, {}, COMPILED),
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
EOS_ID, PAD_ID = SPECIAL["<|im_end|>"], SPECIAL["<|endoftext|>"]


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
    if device == "cuda":  # the workers need the memory; this process keeps only its context
        torch.cuda.empty_cache()
    return path


def build_eos_model(name: str, directory: Path, *, new_tokens: int, median_tokens: int) -> tuple[Path, dict]:
    """The same random model with its EOS logit raised (benchmarks/eos_model.py), calibrated so
    that sampled completions stop after a median of ``median_tokens`` of ``new_tokens``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eos_model import raise_eos_logit

    path = directory / f"qwen2.5-{name}-random-eos{median_tokens}of{new_tokens}"
    calibration = path / "eos_calibration.json"
    if calibration.exists():
        return path, json.loads(calibration.read_text())
    base = build_model(name, directory)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, device_map=device).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 plus 10?"}],
                                           add_generation_prompt=True, return_tensors="pt")
    prompt = getattr(prompt, "input_ids", prompt)  # a BatchEncoding in some versions
    started = time.perf_counter()
    result = raise_eos_logit(model, prompt, EOS_ID, PAD_ID, median_tokens=median_tokens,
                             new_tokens=new_tokens)
    result["calibration_s"] = round(time.perf_counter() - started, 1)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    calibration.write_text(json.dumps(result, indent=1))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path, result


class WorkerFailed(Exception):
    """A worker died, reported an error or did not answer in time."""


class WorkerProcess:
    """One variant's worker process (benchmarks/grpo_worker.py) and the pipe to it."""

    def __init__(self, model: str, spec: str, model_dir: Path, args, rounds: int, log: Path):
        self.model, self.spec, self.log = model, spec, log
        self.variant, self.scenario = parse_variant(spec)
        to_child, from_parent = os.pipe()
        from_child, to_parent = os.pipe()
        env = {**os.environ, **VARIANTS[self.variant][3], "PYTHONUNBUFFERED": "1"}
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", "--variant", self.variant,
                 "--model-dir", str(model_dir), "--ctl-in", str(to_child), "--ctl-out", str(to_parent),
                 "--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(rounds),
                 "--generations", str(args.generations), "--new-tokens", str(args.new_tokens),
                 *(["--profile"] if args.profile else [])],
                env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(to_child, to_parent),
                start_new_session=True)
        os.close(to_child)
        os.close(to_parent)
        self.channel = Channel(from_child, from_parent)
        self.ready: dict | None = None

    def expect(self, event: str, timeout: float) -> dict:
        try:
            message = self.channel.recv(timeout)
        except TimeoutError as exc:
            self.kill()
            raise WorkerFailed(f"{exc} (waiting for {event})\n{self.log_tail()}") from None
        if message is None:
            self.proc.wait(timeout=30)
            raise WorkerFailed(f"worker exited ({self.proc.returncode})\n{self.log_tail()}")
        if message.get("event") != event:
            self.kill()
            raise WorkerFailed(f"{message.get('error') or message}\n{self.log_tail()}")
        return message

    def go(self, timeout: float) -> dict:
        try:
            self.channel.send({"cmd": "go"})
        except OSError:
            raise WorkerFailed(f"worker gone\n{self.log_tail()}") from None
        return self.expect("round", timeout)

    def ask_to_stop(self) -> None:
        try:
            self.channel.send({"cmd": "stop"})
        except OSError:
            pass

    def stop(self, grace: float = 30) -> None:
        """Ask (a paused worker exits at once) and wait; kill what is still running."""
        self.ask_to_stop()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.channel.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker's own session: it and its children
            self.proc.wait()

    def log_tail(self, chars: int = 2500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _remaining(budget: RoundBudget, fallback: float) -> float:
    left = budget.remaining(time.monotonic())
    return fallback if left is None else max(30.0, left)


def bench_model(model: str, specs: list[str], dirs: dict[str, Path], args, inv: Invocation,
                budget: RoundBudget) -> None:
    """All rounds of one model: every spec once per round, in the order given."""
    logs = args.out.parent / f"{args.out.stem}-logs"
    fresh = args.fresh_processes
    rounds_per_process = 1 if fresh else args.rounds
    counter = iter(range(10**6))

    def start(spec: str) -> WorkerProcess:
        variant, scenario = parse_variant(spec)
        return WorkerProcess(model, spec, dirs[scenario], args, rounds_per_process,
                             logs / f"{model}-{spec}-{next(counter)}.log")

    def ready(worker: WorkerProcess) -> bool:
        try:
            worker.ready = worker.expect("ready", _remaining(budget, args.worker_timeout))
        except WorkerFailed as exc:
            inv.add("workers", {"model": model, "spec": worker.spec, "error": str(exc)[-3000:]})
            _say(model=model, variant=worker.spec, error=str(exc).splitlines()[0][:300])
            return False
        inv.add("workers", {"model": model, "spec": worker.spec, "log": worker.log.name,
                            **worker.ready})
        _say(model=model, variant=worker.spec, ready_after_s=worker.ready["startup_s"],
             peak_allocated_gib=worker.ready["peak_allocated_gib"])
        return True

    def measure(worker: WorkerProcess, round_no: int) -> None:
        started = time.monotonic()
        run = {"model": model, "variant": worker.variant, "scenario": worker.scenario,
               "spec": worker.spec, "round": round_no}
        try:
            message = worker.go(_remaining(budget, args.worker_timeout))
            run |= {k: message[k] for k in ("step_times_s", "peak_allocated_gib", "steps")}
            run |= {k: worker.ready[k] for k in ("completions_per_step", "estimated_peak_gib")}
        except WorkerFailed as exc:
            run["error"] = str(exc)[-3000:]
        run["wall_s"] = round(time.monotonic() - started, 1)
        inv.add("runs", run)
        _say(model=model, variant=worker.spec, round=round_no, step_times_s=run.get("step_times_s"),
             peak_allocated_gib=run.get("peak_allocated_gib"),
             error=run["error"].splitlines()[0][:300] if "error" in run else None)

    live: dict[str, WorkerProcess] = {}
    if not fresh:
        if args.serial_start:
            for spec in specs:
                live[spec] = start(spec)
                if not ready(live[spec]):
                    live.pop(spec).kill()
        else:  # load and compile side by side; only measured steps must not overlap
            live = {spec: start(spec) for spec in specs}
            for spec in list(live):
                if not ready(live[spec]):
                    live.pop(spec).kill()
    last_round = None
    try:
        for round_no in range(1, args.rounds + 1):
            if not budget.fits(time.monotonic(), last_round):
                took = f"the last took {last_round:.0f} s" if last_round else "no time left"
                inv.data["stopped_early"] = f"time budget: round {round_no} of {model} would not fit ({took})"
                _say(stopped=inv.data["stopped_early"])
                return
            began = time.monotonic()
            for spec in specs:
                if fresh:
                    worker = start(spec)
                    if ready(worker):
                        measure(worker, round_no)
                    worker.stop()
                elif spec in live:
                    measure(live[spec], round_no)
                    if "error" in inv.data["runs"][-1]:
                        live.pop(spec).kill()
            last_round = time.monotonic() - began
    finally:
        for worker in live.values():  # all at once: they exit side by side
            worker.ask_to_stop()
        for worker in live.values():
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="1.5B,3B", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--variants", default="trl,trl-compiled",
                        help="comma-separated, run in this order every round; VARIANT@eos runs it on "
                             f"the model that stops at EOS. Known: {', '.join(VARIANTS)}")
    parser.add_argument("--eos", action="store_true", help="also run every variant @eos")
    parser.add_argument("--profile", action="store_true",
                        help="profile the GPU kernels of one generate call in the last warm-up "
                             "step of each variant (with --serial-start, so no other worker "
                             "shares the GPU then); kept under workers[].kernel_profile")
    parser.add_argument("--baseline", default="trl", help="ratios are taken against this variant")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs every variant once)")
    parser.add_argument("--steps", type=int, default=2, help="measured optimizer steps per variant per round")
    parser.add_argument("--warmup", type=int, default=1,
                        help="steps before measuring (per process; the first compiles the decode step)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="start no round that would end after this many seconds from the start "
                             "(estimated from the previous round)")
    parser.add_argument("--generations", type=int, default=GENERATIONS)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--eos-median", type=int, default=None,
                        help="median completion length of the @eos model (default: 47%% of --new-tokens)")
    parser.add_argument("--fresh-processes", action="store_true",
                        help="a new process per variant per round (pays loading and compilation every round)")
    parser.add_argument("--serial-start", action="store_true",
                        help="load and warm up one variant at a time instead of side by side")
    parser.add_argument("--worker-timeout", type=float, default=1800,
                        help="seconds to wait for a worker's answer when no --time-budget is set")
    parser.add_argument("--commit", help="the commit measured, when the tree has no .git (else git says)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_gpu.json")
    parser.add_argument("--model-cache", type=Path, default=Path(tempfile.gettempdir()) / "edgetune-bench")
    parser.add_argument("--default-variant", default="trl-compiled-bf16",
                        help="edgetune's default GPU path (what `--backend auto` does)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ctl-in", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ctl-out", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import grpo_worker

        sys.exit(grpo_worker.main(args))
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    specs = args.variants.split(",")
    if args.eos:
        specs += [f"{s}@{EOS}" for s in specs if parse_variant(s)[1] == CAP]
    unknown = [s for s in specs if parse_variant(s)[0] not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    for scenario in {parse_variant(s)[1] for s in specs}:
        if f"{args.baseline}@{scenario}".removesuffix(f"@{CAP}") not in specs:
            print(f"note: no {args.baseline} run in scenario {scenario}: no ratios there", flush=True)
    # A SIGTERM (a timeout's kill) unwinds like Ctrl-C: the results are written, workers stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    budget = RoundBudget(args.time_budget, time.monotonic())
    inv = Invocation(args.out, ROOT, commit=args.commit or os.environ.get("EDGETUNE_COMMIT"),
                     default_variant=args.default_variant, settings={
                         "models": args.models.split(","), "variants": specs,
                         "baseline": args.baseline, "rounds": args.rounds,
                         "steps_per_round": args.steps, "warmup_steps": args.warmup,
                         "generations": args.generations, "new_tokens": args.new_tokens,
                         "prompts_per_micro_batch": 1, "gradient_accumulation": GA,
                         "lora_r": LORA_R, "time_budget_s": args.time_budget,
                         "processes": ("a new one per variant per round" if args.fresh_processes
                                       else "one per variant, kept between rounds")})
    median = args.eos_median or round(0.47 * args.new_tokens)
    try:
        for model in args.models.split(","):
            dirs = {CAP: build_model(model, args.model_cache)}
            if any(parse_variant(s)[1] == EOS for s in specs):
                dirs[EOS], calibration = build_eos_model(model, args.model_cache,
                                                         new_tokens=args.new_tokens,
                                                         median_tokens=median)
                inv.data["eos_models"][model] = calibration
                _say(model=model, eos_model=calibration)
            inv.save()
            bench_model(model, specs, dirs, args, inv, budget)
            if inv.data["stopped_early"]:
                break
    finally:
        inv.save(final=True)
    for row in inv.data["summary"]:
        _say(**{k: row.get(k) for k in ("model", "scenario", "variant", "completions_per_s",
                                        "spread_ok", "spread_note", "peak_allocated_gib",
                                        "vs_baseline", "step_breakdown", "completion_lengths")})


if __name__ == "__main__":
    main()
