"""Training: GRPO (and an SFT warm start) on the creator's data, producing a LoRA adapter.

``train`` is the stage's door (``trainer``); around it: ``config`` (settings), ``runner`` (the
loop of one process), ``backends`` (Unsloth / transformers + PEFT), ``distributed`` (several
GPUs), ``checkpoints`` (resume, Ctrl-C), ``vram`` (will it fit), ``health`` (is it learning),
``rewards`` (DeepSeek-R1 style reward functions).
"""

from edgetune.training.config import LOG_FILE, StepLog, TrainConfig, TrainingInterrupted
from edgetune.training.trainer import train

__all__ = ["LOG_FILE", "StepLog", "TrainConfig", "TrainingInterrupted", "train"]
