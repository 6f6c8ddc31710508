"""One training process of a multi-GPU run, started by ``accelerate launch -m
edgetune.training.worker SPEC`` (see ``edgetune.training.distributed``, which writes SPEC and
follows the processes). Every process runs the same ``runner.run_trainer``; process 0 alone
writes the log, notes, errors and the final adapter.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError

FINAL_DIR = "final"  # process 0 saves the adapter here; train() moves it into place


def _load_rows(kind: str, rows: list[dict]) -> list[Any]:
    if kind == "QARow":
        from edgetune.data import QARow

        return [QARow(**r) for r in rows]
    if kind == "SftExample":
        from edgetune.sft_data import SftExample

        return [SftExample(messages=tuple(r["messages"]), source=r["source"]) for r in rows]
    raise ValueError(f"unknown row type {kind}")


def worker(spec_file: Path) -> int:
    """One training process under ``accelerate launch``; returns its exit code."""
    spec = json.loads(Path(spec_file).read_text())
    folder = Path(spec_file).parent
    from edgetune.training.backends import select_backend
    from edgetune.training.config import LOG_FILE, TrainConfig, TrainingInterrupted
    from edgetune.training.runner import run_trainer

    # From the launcher's environment: an accelerate state made here, before the Trainer makes
    # its own, would fix the process group's device and backend too early.
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
    work = Path(spec["work"])
    cfg = spec["config"]
    config = TrainConfig(**{**cfg, "rewards": tuple(cfg["rewards"])})

    def log(entry: dict) -> None:
        if main:
            with (work / LOG_FILE).open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def note(message: str) -> None:
        if main:
            with (folder / "notes.jsonl").open("a") as fh:
                fh.write(json.dumps({"note": message}) + "\n")

    try:
        backend = select_backend("trl")  # plan_launch refused Unsloth
        # ZeRO-3: the base is split across the GPUs, so the one-GPU memory check does not apply.
        backend.split_base = spec["strategy"] == "zero3"
        effective, trainer = run_trainer(
            backend, Path(spec["base"]), _load_rows(spec["row_type"], spec["rows"]), config, work,
            Path(spec["init_adapter"]) if spec["init_adapter"] else None,
            Path(spec["resume_from"]) if spec["resume_from"] else None, log, None, note,
            spec["overrides"], strategy=spec["strategy"])
    except EdgetuneError as exc:
        if main:
            (folder / "error.json").write_text(json.dumps({
                "message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code,
                "interrupted": isinstance(exc, TrainingInterrupted)}))
        return exc.exit_code
    final = work / FINAL_DIR
    if spec["strategy"] == "zero3":
        trainer.save_model(str(final))  # every process: the LoRA weights are gathered first
    elif main:
        trainer.model.save_pretrained(final)
    if main:
        (final / "effective.json").write_text(json.dumps(effective))
    trainer.accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
