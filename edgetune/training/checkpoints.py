"""Checkpoints of a training run: where they live, which one to resume, and Ctrl-C.

A run's checkpoints sit beside its output (``<out>.checkpoints``) with a ``run.json`` saying
what was trained; ``--resume`` continues only a run with the same base, data and settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgetune.artifacts import write_json_atomic
from edgetune.errors import ConfigError

# Files of a Trainer checkpoint that must all exist before we trust it for --resume
# (a SIGKILL while saving leaves a checkpoint directory without some of them).
_CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_dir(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def last_checkpoint(directory: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` under ``directory``, or None."""
    if not directory.is_dir():
        return None
    complete = [p for p in directory.glob("checkpoint-*")
                if p.name.split("-")[-1].isdigit() and all((p / f).is_file() for f in _CHECKPOINT_FILES)]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prepare_work_dir(work: Path, base: Path, config, init_adapter: Path | None,
                      data: str, *, resume: bool, overwrite: bool) -> Path | None:
    run = {"base_model": str(base), "init_adapter": str(init_adapter or ""), "data": data,
           "config": config.fingerprint()}
    run_file = work / "run.json"
    last = last_checkpoint(work)
    if resume:
        if last is None:
            raise ConfigError(f"nothing to resume: no complete checkpoint in {work}",
                              hint="run without --resume to start training")
        earlier = json.loads(run_file.read_text()) if run_file.is_file() else {}
        changed = sorted(k for k in set(run) | set(earlier) if k != "config" and run.get(k) != earlier.get(k))
        old_cfg, new_cfg = earlier.get("config", {}), run["config"]
        changed += sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        if changed:
            raise ConfigError(f"cannot resume: {', '.join(changed)} differ from the run in {work}",
                              hint="resume with the same settings (only --steps may grow), "
                                   "or pass --overwrite to start again")
        return last
    if work.exists():
        if last is not None and not overwrite:
            raise ConfigError(
                f"an earlier training run stopped at step {checkpoint_step(last)} ({work})",
                hint="add --resume to continue it, or --overwrite to start again")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json_atomic(run_file, run)
    return None


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log entries after ``step``: a resumed run logs those steps again."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    log_path.write_text("".join(line + "\n" for line in kept))


class StopOnSignal:
    """First Ctrl-C: save a checkpoint at the end of this step and stop. Second: abort now."""

    def __init__(self):
        self.requested = False

    # TrainerCallback's hooks, duck-typed so this module imports without transformers.
    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **_kw):
        if self._agreed():
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, **_kw):
        # The Trainer logs (and calls on_step) after on_step_end: a Ctrl-C arriving then must
        # still stop at this step, not run one more whole step first. With several processes
        # only on_step_end decides: they must all stop (and save) at the same step.
        if self.requested and not _distributed():
            control.should_save = True
            control.should_training_stop = True

    def _agreed(self) -> bool:
        """With several training processes (edgetune.training.distributed), stop when any of them was
        asked to: the signal reaches them at slightly different moments, and a process that
        stops alone would leave the others waiting for it forever."""
        if not _distributed():
            return self.requested
        import torch
        import torch.distributed as dist

        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
        flag = torch.tensor([int(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested

    def installed(self, note: Callable[[str], None]):
        import contextlib

        stopper = self

        @contextlib.contextmanager
        def scope():
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handler(_sig, _frame):
                if stopper.requested:
                    raise KeyboardInterrupt
                stopper.requested = True
                note("stopping: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

            previous = signal.signal(signal.SIGINT, handler)
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)

        return scope()


def _distributed() -> bool:
    """True inside a training process of a multi-GPU run (torch.distributed, world size > 1)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return bool(dist and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1)


def data_digest(rows: Sequence[Any]) -> str:
    """A short hash of training data, for provenance in logs and manifests."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(dataclasses.asdict(row), sort_keys=True).encode())
    return h.hexdigest()[:16]
