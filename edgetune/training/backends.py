"""Training backends: how the base model and its LoRA are loaded for TRL's trainers.

``unsloth`` (NVIDIA GPUs): FastLanguageModel, 4-bit or 16-bit base, Unsloth's patched TRL
trainers (least memory). ``trl``: transformers + PEFT, runs anywhere (CPU included, TRL >= 1.16),
optionally 4-bit through bitsandbytes on CUDA; on CUDA its GRPO generation runs with a static KV
cache and CUDA graphs (``edgetune.training.runner.compile_generation``).

``auto`` follows the H100 measurements in benchmarks/results/grpo_gpu.json (completions/s,
8 x 256 tokens, 1.5B / 3B): TRL with compiled generation 4.67 / 3.58, Unsloth 16-bit 1.33 / 1.22,
Unsloth 4-bit 1.04-1.31 / 0.87, TRL 4-bit (bitsandbytes cannot be graphed) 0.59 / 0.61. So:
on a GPU where the 16-bit base fits, TRL with compiled generation; where only a 4-bit base fits
(or ``--base-bits 4`` is asked), Unsloth when installed (``pip install 'edgetune[gpu]'``),
since it needs the least memory (1.8 / 2.9 GiB); on CPU, TRL.

Both hand back the same thing; ``edgetune.training.trainer`` runs the trainer, so every backend leaves
the same artifact layout.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgetune import hf
from edgetune.errors import ConfigError

BACKENDS = ("auto", "unsloth", "trl")
_GPU_HINT = "pip install 'edgetune[gpu]' (Unsloth, bitsandbytes) on a machine with an NVIDIA GPU"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    peft_config: Any | None  # None: the model already carries its LoRA
    device: str
    base_bits: int
    bf16: bool
    extra: dict = field(default_factory=dict)


class TrainBackend(Protocol):
    name: str

    def load(self, base: Path, config, *, init_adapter: Path | None,
             on_note: Callable[[str], None]) -> LoadedModel:
        """The base model (with a LoRA, or a ``peft_config`` for the trainer to add) and tokenizer."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def select_backend(name: str, base: Path | None = None, config=None) -> TrainBackend:
    """The backend for ``name``; ``auto`` needs ``base`` and ``config`` to plan GPU memory."""
    if name == "trl":
        return TrlBackend()
    if name == "unsloth":
        if not cuda_available():
            raise ConfigError("the Unsloth backend needs an NVIDIA GPU (CUDA), and none was found",
                              hint="use --backend trl, which runs on CPU")
        if not unsloth_installed():
            raise ConfigError("Unsloth is not installed", hint=_GPU_HINT)
        return UnslothBackend()
    if name == "auto":
        if (base is not None and config is not None and cuda_available() and unsloth_installed()
                and plan_base_bits(base, config, lambda _msg: None) == 4):
            return UnslothBackend()
        return TrlBackend()
    raise ConfigError(f"unknown training backend '{name}'", hint=f"choose {', '.join(BACKENDS)}")


def preload_backend(name: str, base_model: str | None, config) -> None:
    """Import Unsloth now if training will use it: it must be imported before transformers.

    Called by the CLI before anything loads transformers. A base that cannot be resolved yet is
    left to ``train``, which reports it properly.
    """
    from edgetune.errors import EdgetuneError

    base = None
    if base_model is not None:
        try:
            base = hf.resolve_model(base_model)
        except EdgetuneError:
            return
    select_backend(name, base, config)


def plan_base_bits(base: Path, config, on_note: Callable[[str], None]) -> int:
    """4 or 16: what was asked, or 16 when it fits this GPU and 4 otherwise; refuse what cannot fit."""
    from edgetune.training.vram import ModelShape, check_fits, gpu_memory

    memory = gpu_memory()
    if memory is None:
        if config.base_bits == 4:
            raise ConfigError("a 4-bit base needs an NVIDIA GPU (bitsandbytes), and none was found",
                              hint="drop --base-bits 4 to train the 16-bit base on CPU")
        return 16
    _free, total = memory
    shape = ModelShape.from_dir(base)
    if config.method == "sft":
        settings = dict(lora_r=config.lora_r, num_generations=1, prompts_per_step=config.sft_batch_size,
                        max_prompt_length=0, max_completion_length=config.max_seq_length)
    else:
        settings = dict(lora_r=config.lora_r, num_generations=config.num_generations,
                        prompts_per_step=config.prompts_per_step,
                        max_prompt_length=config.max_prompt_length,
                        max_completion_length=config.max_completion_length)
    if config.base_bits is not None:
        estimate = check_fits(shape, total, base_bits=config.base_bits, **settings)
        bits = config.base_bits
    else:
        try:
            estimate = check_fits(shape, total, base_bits=16, **settings)
            bits = 16
        except ConfigError:
            estimate = check_fits(shape, total, base_bits=4, **settings)
            bits = 4
    on_note(f"estimated peak GPU memory {estimate.total_gib:.1f} GiB of {total / 2**30:.0f} GiB "
            f"({bits}-bit base)")
    return bits


class TrlBackend:
    """transformers + PEFT: the portable path."""

    name = "trl"
    split_base = False  # True in a ZeRO-3 process: the base is spread over several GPUs

    def load(self, base, config, *, init_adapter, on_note):
        import torch
        from peft import LoraConfig, PeftModel
        from transformers import AutoModelForCausalLM

        from edgetune.training.config import LORA_TARGETS

        cuda = torch.cuda.is_available()
        if self.split_base:  # ZeRO-3 (edgetune.training.distributed): the one-GPU check does not apply
            bits = 16
        else:
            bits = plan_base_bits(base, config, on_note)
        bf16 = cuda and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype}
        if bits == 4:
            from transformers import BitsAndBytesConfig

            # This process's GPU: several run under accelerate (edgetune.training.distributed).
            device = int(os.environ.get("LOCAL_RANK", "0"))
            kwargs.update(device_map={"": device}, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True))
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        peft_config = None
        if init_adapter is not None:
            model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        else:
            peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                     target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        return LoadedModel(model=model, tokenizer=hf.load_tokenizer(base), peft_config=peft_config,
                           device="cuda" if cuda else "cpu", base_bits=bits, bf16=bf16)


class UnslothBackend:
    """Unsloth's FastLanguageModel and its patched TRL trainers (NVIDIA GPUs only)."""

    name = "unsloth"

    def __init__(self):
        # Unsloth replays the decode step as CUDA graphs only inside its own RL generation scope,
        # which TRL 1.15's GRPO generate path does not enter; forcing them on measured 1.35x
        # the completions/s on a 3B model (benchmarks/results/grpo_gpu.json). Opt out with =0.
        os.environ.setdefault("UNSLOTH_DECODE_CUDA_GRAPHS", "1")
        # Unsloth patches transformers, PEFT and TRL when imported, so it must come first.
        import unsloth  # noqa: F401

    def load(self, base, config, *, init_adapter, on_note):
        import torch
        import unsloth
        from unsloth import FastLanguageModel

        from edgetune.training.config import LORA_TARGETS

        bits = plan_base_bits(base, config, on_note)
        max_seq = (config.max_seq_length if config.method == "sft"
                   else config.max_prompt_length + config.max_completion_length)
        model, _tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(init_adapter or base), max_seq_length=max_seq,
            load_in_4bit=bits == 4, load_in_16bit=bits == 16, dtype=None,
            fast_inference=False, max_lora_rank=config.lora_r, use_exact_model_name=True,
            random_state=config.seed)
        if init_adapter is None:
            model = FastLanguageModel.get_peft_model(
                model, r=config.lora_r, target_modules=LORA_TARGETS, lora_alpha=config.lora_alpha,
                lora_dropout=0.0, use_gradient_checkpointing="unsloth", random_state=config.seed)
        else:
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.requires_grad_(True)
        # Our tokenizer loader, not Unsloth's: the same token ids as the CPU path and the GGUF.
        return LoadedModel(model=model, tokenizer=hf.load_tokenizer(base), peft_config=None,
                           device="cuda", base_bits=bits, bf16=torch.cuda.is_bf16_supported(),
                           extra={"unsloth_version": getattr(unsloth, "__version__", "?")})
