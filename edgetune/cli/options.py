"""Option decorators and prompts that several commands share.

Key options have one meaning each: ``--signing-key`` is always the creator's private key and
``--public-key`` the public one; ``--key``, their old name, stays as a second spelling of
whichever one the command takes, so existing scripts keep working.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from edgetune.cli.base import echo
from edgetune.keys import is_encrypted, permission_warning


def passphrase_for(private_key: Path) -> str | None:
    """EDGETUNE_KEY_PASSPHRASE, else a prompt when the key file is encrypted. Never echoed.
    Every command that signs asks here first, so this is where a readable key is warned about."""
    if warning := permission_warning(private_key):
        echo(f"Warning: {warning}", err=True)
    secret = os.environ.get("EDGETUNE_KEY_PASSPHRASE")
    if secret:
        return secret
    # On stderr: stdout may carry --json output.
    return (click.prompt(f"Passphrase for {private_key}", hide_input=True, err=True)
            if is_encrypted(private_key) else None)


_KEY_FILE = click.Path(dir_okay=False, path_type=Path)


def signing_key_option(help: str = "The creator's private key, which signs. Default: "
                                   "~/.edgetune/keys/edgetune.key (passphrase from "
                                   "EDGETUNE_KEY_PASSPHRASE, or asked for).", **attrs):
    """``--signing-key`` (alias ``--key``): the private key, passed as ``private_key``."""
    return click.option("--signing-key", "--key", "private_key", help=help,
                        **{"type": _KEY_FILE, **attrs})


def public_key_option(help: str, **attrs):
    """``--public-key`` (alias ``--key``): the creator's public key, passed as ``public_key``."""
    return click.option("--public-key", "--key", "public_key", help=help,
                        **{"type": _KEY_FILE, **attrs})



def json_option(help: str = "Print the result as JSON on stdout."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def training_options(fn):
    """GRPO/SFT settings shared by `build` and `train` (defaults: see TrainConfig)."""
    options = [
        click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps."),
        click.option("--backend", type=click.Choice(["auto", "trl", "unsloth"]), default="auto",
                     show_default=True,
                     help="auto: Unsloth on an NVIDIA GPU when installed, else TRL + PEFT."),
        click.option("--base-bits", type=click.Choice(["4", "16"]), default=None,
                     help="Load the base in 4 or 16 bit (GPU). Default: 16 if it fits, else 4."),
        click.option("--num-generations", type=click.IntRange(min=2), default=None,
                     help="GRPO completions per prompt."),
        click.option("--prompts-per-step", type=click.IntRange(min=1), default=None,
                     help="GRPO prompts per micro-batch."),
        click.option("--gradient-accumulation-steps", type=click.IntRange(min=1), default=None),
        click.option("--max-completion-length", type=click.IntRange(min=8), default=None,
                     help="GRPO: longest completion in tokens."),
        click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None),
        click.option("--lora-r", type=click.IntRange(min=1), default=None, help="LoRA rank."),
        click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="GRPO sampling temperature."),
        click.option("--answer-format", type=click.Choice(["reasoning", "think", "r1"]), default=None,
                     help="What the rewards expect: <reasoning>..</reasoning><answer>..</answer> "
                          "(default), <think>..</think><answer>..</answer>, or r1: <think>..</think> "
                          "then the plain answer (default after SFT on <think> data)."),
        click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
                     help="Save a resumable checkpoint every N steps (0: only on Ctrl-C)."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted run from its last checkpoint."),
        click.option("--gpus", type=click.IntRange(min=1), default=None,
                     help="Train on N GPUs of this machine through accelerate (data parallel; "
                          "DeepSpeed ZeRO-3 when the base does not fit one GPU). Default: 1."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


TRAIN_FIELDS = ("steps", "backend", "num_generations", "prompts_per_step",
                "gradient_accumulation_steps", "max_completion_length", "learning_rate", "lora_r",
                "temperature", "answer_format", "checkpoint_every", "gpus")


def train_config(base, options: dict):
    """Command-line values over ``base`` (a TrainConfig); options left unset keep its values."""
    changes = {k: options[k] for k in TRAIN_FIELDS if options.get(k) is not None}
    if options.get("base_bits") is not None:
        changes["base_bits"] = int(options["base_bits"])
    return dataclasses.replace(base, **changes)
