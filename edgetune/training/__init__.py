"""Training: GRPO (and an SFT warm start) on the creator's data, producing a LoRA adapter.

``train`` is the stage's door (``trainer``); around it: ``config`` (settings), ``defaults``
(settings that fit the model, the device and the data), ``warmstart`` (teach the answer format
first when the base never writes it), ``runner`` (the loop of one process), ``backends``
(Unsloth / transformers + PEFT), ``distributed`` and ``worker`` (several GPUs),
``checkpoints`` (resume, Ctrl-C), ``vram`` (will it fit), ``health`` (is it learning),
``rewards`` (DeepSeek-R1 style reward functions).
"""

from __future__ import annotations

from typing import Any

# Resolved on first use: importing a leaf like ``edgetune.training.rewards`` runs this file
# first, and must not pull in the trainer (and with it the modules that import rewards).
_EXPORTS = {"train": "trainer", "LOG_FILE": "config", "StepLog": "config",
            "TrainConfig": "config", "TrainingInterrupted": "config"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgetune.training' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"edgetune.training.{_EXPORTS[name]}"), name)
