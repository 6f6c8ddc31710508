"""One variant of benchmarks/grpo_gpu.py, in its own process (Unsloth patches transformers and TRL
on import, so no two variants may share one).

The worker trains with edgetune's own code (``edgetune.training.trainer.train``) and paces itself
by the parent: after the warm-up steps it reports "ready" and waits; then, for every round, it
runs ``--steps`` optimizer steps when told "go", reports their times and waits again. So the
variants take turns on the GPU (A B C A B C ...) while each keeps its loaded model and compiled
decode step; a paused worker has no GPU work in flight. "stop" (or the parent's pipe closing)
ends training at once: no adapter is written.

Where a step's time goes, with CUDA-synchronised timers around three calls, patched on their
classes so that every backend goes through them: ``generate`` (and ``generate_batch`` for
continuous batching), ``Accelerator.backward`` and the optimizer step. The rest of a step is the
log-prob and loss forwards, rewards and Python. Each timer adds two synchronisations per call
(a few per step), the same in every variant.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eos_model import completion_lengths  # noqa: E402
from grpo_rounds import Channel  # noqa: E402


class StopBenchmark(Exception):
    """Raised from the step callback to end training when the parent says stop."""


class Timers:
    """Wall-clock spans (start, end) of the patched calls, synchronised with the GPU."""

    def __init__(self, cuda: bool, eos_ids: list[int]):
        self.cuda, self.eos_ids, self.events, self._depth = cuda, eos_ids, [], 0
        self.profile_next, self.profile = False, None  # --profile: one generate call, profiled

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def wrap(self, owner, name: str, kind: str, inspect=None) -> None:
        original = getattr(owner, name)
        timers = self

        def timed(obj, *a, **kw):
            if timers._depth:  # a nested call (a wrapper calling generate again) counts once
                return original(obj, *a, **kw)
            timers._depth += 1
            try:
                timers.sync()
                start = time.perf_counter()
                if kind == "generate" and timers.profile_next and timers.cuda:
                    timers.profile_next = False
                    out, timers.profile = profiled(original, obj, *a, **kw)
                else:
                    out = original(obj, *a, **kw)
                timers.sync()
                end = time.perf_counter()
            finally:
                timers._depth -= 1
            event = {"kind": kind, "start": start, "end": end}
            if inspect is not None:
                event |= inspect(a, kw, out)
            self.events.append(event)
            return out

        setattr(owner, name, timed)

    def _generated(self, a, kw, out) -> dict:
        prompt = kw.get("input_ids", a[0] if a else None)
        sequences = out if hasattr(out, "shape") else getattr(out, "sequences", None)
        if prompt is None or sequences is None:
            return {}
        new = sequences[:, prompt.shape[1]:]
        return {"decode_steps": int(new.shape[1]), "lengths": completion_lengths(new, self.eos_ids)}

    @staticmethod
    def _batch_generated(a, kw, out) -> dict:
        lengths = [len(o.generated_tokens) for o in out.values()]
        return {"decode_steps": max(lengths, default=0), "lengths": lengths}

    def install(self) -> None:
        import accelerate
        from accelerate.optimizer import AcceleratedOptimizer
        from transformers.generation.utils import GenerationMixin

        self.wrap(GenerationMixin, "generate", "generate", self._generated)
        try:
            from transformers.generation.continuous_batching.continuous_api import ContinuousMixin

            self.wrap(ContinuousMixin, "generate_batch", "generate", self._batch_generated)
        except ImportError:
            pass
        self.wrap(accelerate.Accelerator, "backward", "backward")
        self.wrap(AcceleratedOptimizer, "step", "optimizer")

    def step(self, start: float, end: float) -> dict:
        """Sum the spans that began inside one step, and forget them."""
        mine = [e for e in self.events if start <= e["start"] < end]
        self.events = [e for e in self.events if e["start"] >= end]
        out = {"step_s": round(end - start, 4), "generate_calls": 0}
        for e in mine:
            key = f"{e['kind']}_s"
            out[key] = round(out.get(key, 0.0) + e["end"] - e["start"], 4)
            if e["kind"] == "generate":
                out["generate_calls"] += 1
                out["decode_steps"] = out.get("decode_steps", 0) + e.get("decode_steps", 0)
                out.setdefault("completion_lengths", []).extend(e.get("lengths", []))
        return out


# Kernel name fragments -> what the time went to (first match wins; lower-case).
KERNEL_KINDS = (("attention", ("flash", "fmha", "attention", "sdpa")),
                ("matmul", ("gemm", "gemv", "cutlass", "xmma", "cublas", "sm90", "matmul", "mm_")),
                ("sampling", ("sort", "radix", "topk", "multinomial", "softmax", "argmax", "cumsum")),
                ("copy/cat", ("copy", "cat", "fill", "index", "scatter", "gather")),
                ("fused (triton)", ("triton",)),
                ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce")))


def profiled(call, *a, **kw):
    """Run ``call`` under torch.profiler; CUDA kernel time by kind and the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = call(*a, **kw)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if getattr(e, "device_type", None) is not None
               and str(e.device_type).endswith("CUDA")]
    total_us = sum(e.self_device_time_total for e in kernels) or 1.0
    by_kind: dict[str, float] = {}
    for e in kernels:
        name = e.key.lower()
        kind = next((k for k, frags in KERNEL_KINDS if any(f in name for f in frags)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + e.self_device_time_total
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:15]
    return out, {"gpu_busy_ms": round(total_us / 1e3, 1),
                 "kernel_launches": sum(e.count for e in kernels),
                 "share_by_kind": {k: round(v / total_us, 3) for k, v in sorted(
                     by_kind.items(), key=lambda kv: -kv[1])},
                 "top_kernels": [{"name": e.key[:120], "calls": e.count,
                                  "ms": round(e.self_device_time_total / 1e3, 2)} for e in top]}


class Pacer:
    """The step callback: measures steps and waits for the parent between rounds."""

    def __init__(self, channel: Channel, timers: Timers, *, warmup: int, steps: int, peak,
                 config_of):
        self.channel, self.timers, self.warmup, self.steps = channel, timers, warmup, steps
        self.profile = False
        self.peak, self.config_of = peak, config_of
        self.count, self.mark, self.round = 0, time.perf_counter(), []
        self.started = self.mark

    def _wait(self) -> None:
        message = self.channel.recv(None)
        if message is None or message.get("cmd") != "go":
            raise StopBenchmark
        self.timers.events.clear()
        self.round, self.mark = [], time.perf_counter()

    def on_step(self, _log) -> None:
        self.timers.sync()
        now = time.perf_counter()
        self.count += 1
        if self.count < self.warmup:
            self.mark = now
            self.timers.profile_next = self.profile and self.count == self.warmup - 1
            return
        if self.count == self.warmup:
            self.channel.send({"event": "ready", "startup_s": round(now - self.started, 1),
                               "last_warmup_step_s": round(now - self.mark, 3),
                               **({"kernel_profile": self.timers.profile}
                                  if self.timers.profile else {}),
                               "peak_allocated_gib": self.peak(), **self.config_of()})
            self._wait()
            return
        self.round.append(self.timers.step(self.mark, now))
        self.mark = now
        if len(self.round) == self.steps:
            self.channel.send({"event": "round", "steps": self.round,
                               "step_times_s": [s["step_s"] for s in self.round],
                               "peak_allocated_gib": self.peak()})
            self._wait()


def run(args, channel: Channel) -> None:
    """Train ``args.variant`` on ``args.model_dir`` under the parent's pacing."""
    from grpo_gpu import EOS_ID, GA, LORA_R, VARIANTS

    backend, bits, overrides, _env, config_overrides = VARIANTS[args.variant]
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as edgetune does)
    import torch

    cuda = torch.cuda.is_available()  # False only in a CPU smoke test (--models tiny)
    timers = Timers(cuda, [EOS_ID])
    timers.install()
    from edgetune.data import QARow
    from edgetune.training.checkpoints import checkpoint_dir
    from edgetune.training.config import LOG_FILE, TrainConfig
    from edgetune.training.trainer import train
    from edgetune.training.vram import ModelShape, estimate_vram

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = [QARow(question=f"What is {i} plus {i + 7}?", answer=str(2 * i + 7), reasoning="",
                  source=f"bench:{i}") for i in range(256)]
    # One step more than the rounds need: training never ends on its own before "stop".
    config = TrainConfig(steps=args.warmup + args.steps * args.rounds + 1,
                         num_generations=args.generations, prompts_per_step=1,
                         gradient_accumulation_steps=GA, max_prompt_length=64,
                         max_completion_length=args.new_tokens, learning_rate=5e-6, lora_r=LORA_R,
                         lora_alpha=LORA_R, backend=backend, base_bits=bits, checkpoint_every=0,
                         **config_overrides)
    estimate = estimate_vram(ModelShape.from_dir(args.model_dir), base_bits=bits, lora_r=LORA_R,
                             num_generations=args.generations, prompts_per_step=1,
                             max_prompt_length=64, max_completion_length=args.new_tokens)

    def peak():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "adapter"

        def config_of() -> dict:  # the settings the trainer really used, from its log's first line
            first = json.loads((checkpoint_dir(out) / LOG_FILE).read_text().splitlines()[0])
            eff = {k: v for k, v in first.items() if k not in ("step", "event")}
            return {"effective_config": eff, "trainer_overrides": overrides,
                    "completions_per_step": eff["per_device_train_batch_size"]
                    * eff["gradient_accumulation_steps"],
                    "estimated_peak_gib": round(estimate.total_gib, 3),
                    "hostname": socket.gethostname(),
                    "device": torch.cuda.get_device_name() if cuda else "cpu"}

        pacer = Pacer(channel, timers, warmup=args.warmup, steps=args.steps, peak=peak,
                      config_of=config_of)
        pacer.profile = bool(getattr(args, "profile", False))
        try:
            train(str(args.model_dir), rows, config, out, on_step=pacer.on_step,
                  trainer_overrides=overrides)
        except StopBenchmark:
            return
    channel.send({"event": "error", "error": "training ended before the parent said stop"})


def main(args) -> int:
    channel = Channel(args.ctl_in, args.ctl_out)
    try:
        run(args, channel)
    except BaseException as exc:  # the parent records it with the worker's log
        import traceback

        try:
            channel.send({"event": "error", "error": traceback.format_exc()[-3000:]})
        except OSError:
            pass
        if not isinstance(exc, Exception):
            raise
        return 1
    return 0


if __name__ == "__main__":
    print("run through benchmarks/grpo_gpu.py", file=sys.stderr)
    sys.exit(os.EX_USAGE)
