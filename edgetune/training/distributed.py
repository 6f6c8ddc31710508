"""Training on several GPUs of one machine: the same run, handed to ``accelerate launch``.

edgetune does not distribute anything itself. ``train(..., config.gpus=N)`` prepares the run
exactly as for one GPU (checkpoint folder, ``run.json``, resume point), writes an accelerate
config and a spec of the run into ``<out>.checkpoints/launch/``, and starts
``accelerate launch -m edgetune.training.worker SPEC`` with N processes. Each process runs the same
``edgetune.training.runner.run_trainer`` on its GPU; the Trainer (through accelerate) shards the batches
and averages the LoRA gradients. Process 0 alone writes ``training_log.jsonl``, the checkpoints
(the Trainer's own rule) and the final adapter, so the layout is the one-GPU layout and a run
resumes on any number of GPUs.

Strategies:

* ``ddp`` (data parallel): every GPU holds the whole base. Used whenever the base fits one GPU
  (16-bit, or 4-bit with ``--base-bits 4``). Each GPU takes ``prompts_per_step`` prompts per
  micro-batch, so N GPUs see N times the prompts per step (like TRL's per-device batch).
* ``zero3`` (DeepSpeed ZeRO stage 3): the base's 16-bit weights are split across the GPUs, for
  bases that do not fit one card. Needs ``pip install deepspeed``; generation is not compiled
  (the weights are gathered for every generate call).

The parent process keeps the user's terminal: it shows progress by reading process 0's
training log, turns Ctrl-C into a checkpoint on every GPU (the processes agree on the step to
stop at, see ``edgetune.training.checkpoints.StopOnSignal``) and reports a failed process with the tail
of its output (all of it in ``launch/launch.log``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import ConfigError, EdgetuneError
from edgetune.training.worker import FINAL_DIR  # where process 0 saves the adapter

LAUNCH_DIR = "launch"


@dataclass(frozen=True)
class LaunchPlan:
    gpus: int
    strategy: str  # "ddp" or "zero3"
    base_bits: int | None  # what every process loads: 4, 16, or None (the backend decides)
    mixed_precision: str  # "bf16" or "no"
    reason: str  # one line for the user: why this strategy


def visible_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def plan_launch(config, *, backend: str, available: int, fits_one_gpu: bool | None,
                bf16: bool = True, deepspeed: bool | None = None) -> LaunchPlan:
    """How to spread ``config`` over ``config.gpus`` GPUs, or a ConfigError naming the way out.

    ``backend`` is the one asked for ("auto", "trl" or "unsloth"); ``available`` the GPUs this
    machine has; ``fits_one_gpu`` whether the 16-bit base fits one of them (None: unknown).
    """
    n = config.gpus
    if backend == "unsloth":
        raise ConfigError(
            f"--gpus {n}: the Unsloth backend trains on one GPU only",
            hint=f"use --backend trl (or auto) for {n} GPUs: TRL + PEFT through accelerate, with "
                 "compiled generation; or keep --backend unsloth with --gpus 1")
    if available == 0:
        raise ConfigError(f"--gpus {n}: no NVIDIA GPU was found on this machine",
                          hint="drop --gpus to train on the CPU, or run on a machine with GPUs")
    if n > available:
        raise ConfigError(f"--gpus {n}: this machine has {available} GPU(s)",
                          hint=f"use --gpus {available} or fewer (CUDA_VISIBLE_DEVICES limits "
                               "which ones are used)")
    precision = "bf16" if bf16 else "no"
    if config.base_bits == 4:
        return LaunchPlan(n, "ddp", 4, precision, "4-bit base on every GPU (data parallel)")
    if fits_one_gpu is not False:
        return LaunchPlan(n, "ddp", config.base_bits, precision,
                          "the base fits one GPU: data parallel")
    if deepspeed is None:
        deepspeed = deepspeed_installed()
    if not deepspeed:
        if config.base_bits is None:  # what one GPU would do too: a 4-bit base where 16 can't fit
            return LaunchPlan(n, "ddp", 4, precision,
                              "the 16-bit base does not fit one GPU: 4-bit base on every GPU "
                              "(pip install deepspeed to split the 16-bit base across GPUs)")
        raise ConfigError(
            f"--gpus {n}: the 16-bit base does not fit one GPU, and splitting it across GPUs "
            "needs DeepSpeed (ZeRO stage 3), which is not installed",
            hint="pip install deepspeed, or use --base-bits 4 to train a 4-bit base on every GPU")
    if config.compile_generation:
        raise ConfigError(
            "compile_generation cannot be used when the base is split across GPUs (ZeRO-3)",
            hint="drop compile_generation (null picks what applies)")
    return LaunchPlan(n, "zero3", 16, precision,
                      "the 16-bit base does not fit one GPU: weights split across GPUs "
                      "(DeepSpeed ZeRO-3)")


def plan_for(config, base: Path, *, on_note: Callable[[str], None]) -> LaunchPlan:
    """``plan_launch`` for this machine's GPUs and ``base``'s size (the VRAM estimator's view)."""
    from edgetune.training.vram import ModelShape, check_fits, gpu_memory

    available = visible_gpus()
    fits = None
    memory = gpu_memory() if available else None
    if memory is not None and config.base_bits != 4:
        settings = (dict(num_generations=1, prompts_per_step=config.sft_batch_size,
                         max_prompt_length=0, max_completion_length=config.max_seq_length)
                    if config.method == "sft" else
                    dict(num_generations=config.num_generations,
                         prompts_per_step=config.prompts_per_step,
                         max_prompt_length=config.max_prompt_length,
                         max_completion_length=config.max_completion_length))
        try:
            check_fits(ModelShape.from_dir(base), memory[1], base_bits=16, lora_r=config.lora_r,
                       **settings)
            fits = True
        except ConfigError:
            fits = False
    bf16 = False
    if available:
        import torch

        bf16 = torch.cuda.is_bf16_supported()
    return plan_launch(config, backend=config.backend, available=available, fits_one_gpu=fits,
                       bf16=bf16)


def accelerate_config(plan: LaunchPlan, port: int) -> dict:
    """The config file ``accelerate launch --config_file`` reads (``accelerate config``'s keys)."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if plan.strategy == "ddp" else "DEEPSPEED",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": plan.gpus,
        "gpu_ids": "all",
        "mixed_precision": plan.mixed_precision,
        "main_process_ip": "127.0.0.1",
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "downcast_bf16": "no",
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False,
    }
    if plan.strategy == "zero3":
        config["deepspeed_config"] = {
            "zero_stage": 3,
            "zero3_init_flag": True,  # the base is created already split: it never fits one GPU
            "zero3_save_16bit_model": True,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config_file: Path, spec_file: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "edgetune.training.worker", str(spec_file)]


# --- the parent: prepare, launch, follow ---------------------------------------------------------

def _rows(data: Sequence[Any]) -> tuple[str, list[dict]]:
    kind = type(data[0]).__name__
    return kind, [dataclasses.asdict(r) for r in data]


def write_launch_files(work: Path, plan: LaunchPlan, *, base: Path, data: Sequence[Any], config,
                       init_adapter: Path | None, resume_from: Path | None,
                       overrides: dict) -> tuple[Path, Path]:
    """``launch/accelerate.yaml`` and ``launch/spec.json`` under the run's checkpoint folder."""
    import yaml

    from edgetune.artifacts import write_json_atomic

    folder = work / LAUNCH_DIR
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*"):  # pids, errors and notes of an earlier attempt
        if stale.is_file():
            stale.unlink()
    kind, rows = _rows(data)
    config = dataclasses.replace(config, base_bits=plan.base_bits)
    spec = {"base": str(base), "config": dataclasses.asdict(config), "row_type": kind, "rows": rows,
            "work": str(work), "init_adapter": str(init_adapter) if init_adapter else None,
            "resume_from": str(resume_from) if resume_from else None, "overrides": overrides,
            "strategy": plan.strategy}
    spec_file = folder / "spec.json"
    write_json_atomic(spec_file, spec)
    config_file = folder / "accelerate.yaml"
    config_file.write_text(yaml.safe_dump(accelerate_config(plan, free_port()), sort_keys=False))
    return config_file, spec_file


def run(plan: LaunchPlan, *, work: Path, base: Path, data: Sequence[Any], config,
        init_adapter: Path | None, resume_from: Path | None, overrides: dict,
        on_step: Callable[[Any], None] | None, note: Callable[[str], None]) -> dict:
    """Launch the processes, follow them, and return the effective settings process 0 used."""
    import yaml

    from edgetune.training.config import LOG_FILE, StepLog, TrainingInterrupted

    config_file, spec_file = write_launch_files(
        work, plan, base=base, data=data, config=config, init_adapter=init_adapter,
        resume_from=resume_from, overrides=overrides)
    folder = spec_file.parent
    note(f"{plan.gpus} GPUs, {plan.strategy}: {plan.reason} (accelerate config: {config_file})")
    log_path, notes_path, output = work / LOG_FILE, folder / "notes.jsonl", folder / "launch.log"
    followed = {log_path: log_path.stat().st_size if log_path.exists() else 0, notes_path: 0}

    def follow() -> None:
        for path in (log_path, notes_path):
            for entry in _new_lines(path, followed):
                if path == notes_path:
                    note(entry.get("note", ""))
                elif "event" not in entry and entry.get("step") and on_step:
                    on_step(StepLog(entry["step"], config.steps,
                                    {k: v for k, v in entry.items() if k != "step"}))
                elif entry.get("event") == "warning":
                    note(f"warning (step {entry.get('step')}): {entry.get('message')}")

    for attempt in range(1, _PORT_ATTEMPTS + 1):
        proc, interrupts = _launch(config_file, spec_file, output, follow, note)
        if proc.returncode == 0 or interrupts or attempt == _PORT_ATTEMPTS \
                or not _port_taken(output):
            break
        # free_port() chose a port that something else took before the processes bound it.
        note("the port for the training processes was taken meanwhile; launching again")
        cfg = yaml.safe_load(config_file.read_text())
        config_file.write_text(yaml.safe_dump({**cfg, "main_process_port": free_port()},
                                              sort_keys=False))
    error = folder / "error.json"
    if error.is_file():  # process 0 stopped on an edgetune error: re-raise it as it was
        err = json.loads(error.read_text())
        if err.get("interrupted"):
            raise TrainingInterrupted(err["message"], hint=err.get("hint"))
        raise EdgetuneError(err["message"], hint=err.get("hint"), exit_code=err.get("exit_code", 1))
    if proc.returncode != 0 or not (work / FINAL_DIR / "effective.json").is_file():
        if interrupts:
            raise TrainingInterrupted("training stopped", hint="run the same command with --resume "
                                      "to continue from the last checkpoint")
        tail = output.read_text(errors="replace").splitlines()[-15:]
        raise EdgetuneError(
            f"multi-GPU training failed (accelerate exited with {proc.returncode}):\n  "
            + "\n  ".join(tail),
            hint=f"the whole output is in {output}; --gpus 1 runs the same training on one GPU")
    return json.loads((work / FINAL_DIR / "effective.json").read_text())


_PORT_ATTEMPTS = 3


def _port_taken(output: Path) -> bool:
    text = output.read_text(errors="replace").lower()
    return "address already in use" in text or "eaddrinuse" in text


def _launch(config_file: Path, spec_file: Path, output: Path, follow: Callable[[], None],
            note: Callable[[str], None]) -> tuple[subprocess.Popen, int]:
    """Run the launcher until it exits, following the log; returns it and the Ctrl-C count."""
    folder = spec_file.parent
    with output.open("wb") as out:
        # Its own session: the terminal's Ctrl-C reaches only us, and we pass it on to the
        # training processes themselves (accelerate's launcher would kill them without a save).
        proc = subprocess.Popen(launch_command(config_file, spec_file), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        interrupts = 0

        def on_sigint(_sig, _frame):
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                note("stopping: every GPU saves a checkpoint at the end of this step "
                     "(Ctrl-C again to abort)")
                _signal_workers(folder, signal.SIGINT)
            else:
                _kill_group(proc)

        previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
        try:
            while proc.poll() is None:
                follow()
                time.sleep(0.5)
            follow()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    return proc, interrupts


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _new_lines(path: Path, offsets: dict[Path, int]) -> list[dict]:
    """Complete JSON lines appended to ``path`` since the last call."""
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(offsets[path])
        chunk = fh.read()
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
    offsets[path] += end
    entries = []
    for line in chunk[:end].splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _signal_workers(folder: Path, sig: int) -> None:
    for pid_file in folder.glob("rank*.pid"):
        try:
            os.kill(int(pid_file.read_text()), sig)
        except (OSError, ValueError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


# What PeftModel.save_pretrained writes: the same files as a one-GPU run's adapter.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def copy_adapter(final: Path, target: Path) -> None:
    """Move process 0's saved adapter into ``target`` (train()'s atomic output folder)."""
    import shutil

    for name in ADAPTER_FILES:
        if (final / name).is_file():
            shutil.copyfile(final / name, target / name)
    if not (target / "adapter_model.safetensors").is_file():
        raise EdgetuneError(f"the multi-GPU run left no adapter in {final}",
                            hint="run again; --gpus 1 trains the same run on one GPU")
