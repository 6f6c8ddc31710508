"""Before any work: check what a build will need, and fit its settings to the real model.

A build that fails after an hour of training for a reason knowable in the first second (a
mistyped folder, a hub id with no network, an unwritable output folder, a key with the wrong
passphrase, a base model whose licence nobody stated, a disk too small for the quants) wastes
the creator's evening. The ``check_*`` functions run those checks first. ``prepare`` then
turns the project into the one the stages build: the training settings not given fitted to the
model, device and data (``training.defaults``), the creator and base licence settled, and the
format warm start set up where a pretrained base needs it (``training.warmstart``). ``edgetune status`` calls ``prepare`` too, so it plans the
same stages as the build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetune.basemodel import BaseModel
from edgetune.errors import ConfigError, KeyFileError, OutputExistsError
from edgetune.project import Project
from edgetune.stages import BuildInputs
from edgetune.training.defaults import TOY_MODEL, FittedSettings


@dataclass(frozen=True)
class Prepared:
    project: Project  # the settings the stages use
    inputs: BuildInputs  # with the warm start's examples when it applies
    base: BaseModel | None  # None: the built-in demo model
    fitted: FittedSettings | None  # None: no setting fitted (the demo, or a tiny test model)


def check_output(out: Path, option: str = "--out") -> None:
    """The output folder can be created and written: not a file, not inside a file, not
    read-only. Tried with a scratch file, not ``os.access``, which says yes to root on a
    read-only disk."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{option} {out} is a file", hint=f"choose a folder for {option}")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"{option} {out}: {parent} is a file, not a folder",
                          hint=f"choose a folder for {option}")
    try:
        fd, scratch = tempfile.mkstemp(dir=parent, prefix=".edgetune-write-test-")
        os.close(fd)
        os.unlink(scratch)
    except OSError as e:
        raise ConfigError(f"cannot write to {parent} ({option} {out}): {e.strerror}",
                          hint=f"choose a {option} folder you can write to") from None


def read_text(path: Path, option: str) -> str:
    """A text file the user named (``--system-prompt-file``), as UTF-8: an error naming the
    file and the option instead of a traceback when it cannot be read or decoded."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{option} {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start})", hint="save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot be read ({e.strerror})",
                          hint="check the path and its permissions") from None


# Bits per weight of each quant type, as llama.cpp builds them for 1-8B models (rounded up):
# enough for a disk estimate, which only has to be right within a factor of two.
_BITS_PER_WEIGHT = {"Q2_K": 3.0, "Q3_K_S": 3.5, "Q3_K_M": 4.0, "Q3_K_L": 4.3, "IQ4_XS": 4.3,
                    "Q4_0": 4.6, "Q4_K_S": 4.7, "Q4_K_M": 5.0, "Q4_K_X": 5.0, "Q5_K_S": 5.6,
                    "Q5_K_M": 5.8,
                    "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0, "BF16": 16.0}


def check_space(out: Path, base: BaseModel | None, quants: Sequence[str]) -> None:
    """Roughly enough free disk under ``out`` for the merged model and the F16 GGUF (2 bytes a
    weight each) and every quant, written once and copied into the bundle. Skipped when the
    model's size is unknown (the demo); what ``out`` already holds is counted as free, as a
    rebuild replaces it."""
    if base is None or not base.parameters:
        return
    bits = 16 + 16 + 2 * sum(_BITS_PER_WEIGHT.get(q.upper(), 8.5) for q in quants)
    need = int(base.parameters * bits / 8)
    parent = next((p for p in (Path(out), *Path(out).parents) if p.exists()), Path("."))
    free = shutil.disk_usage(parent).free + _size_of(Path(out))
    if free < need:
        raise ConfigError(f"not enough disk space for this build in {parent}: about "
                          f"{need / 1e9:.1f} GB needed (merged model, F16 GGUF, {len(quants)} "
                          f"quant(s) and their copies in the bundle), {free / 1e9:.1f} GB free",
                          hint="free some space, or choose an --out folder on a larger disk")


def _size_of(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_base(project: Project) -> BaseModel | None:
    """The base model resolves to a complete folder; its licence is known (stated or on its card)."""
    if project.base_model is None:
        return None
    from edgetune import basemodel

    base = basemodel.resolve(project.base_model, hub_id=project.base_model_id)
    if project.base_model_license is None and base.license is None:
        raise ConfigError(
            f"the base model's licence is unknown: {base.path} has no model card (README.md) "
            "stating one",
            hint="give it as project.base_model_license in edgetune.yaml or --base-model-license "
                 "(e.g. apache-2.0; see the model's page on the Hub)")
    return base


def check_key(private_key: Path | None, passphrase: str | None) -> None:
    """The signing key loads with this passphrase and the .pub beside it is its public half: a
    broken (e.g. 0-byte) key, a wrong passphrase or a stray .pub fails now, not when the bundle
    is signed after training. ``None``: the default key, which the build makes if missing."""
    from edgetune.keys import default_private_key, key_id, load_private_key, load_public_key

    key = Path(private_key) if private_key is not None else default_private_key()
    if not os.path.lexists(key):
        if private_key is None:
            return
        raise KeyFileError(f"signing key {key} not found",
                           hint="create one with `edgetune keys new`")
    public_half = key_id(load_private_key(key, passphrase).public_key())
    pub = key.with_suffix(".pub")
    if os.path.lexists(pub) and key_id(load_public_key(pub)) != public_half:
        raise KeyFileError(f"{pub} is not the public key of {key}",
                           hint="the build verifies the signed bundle with the .pub beside the "
                                "key: put the matching .pub there (or remove the stray one)")


def prepare(project: Project, inputs: BuildInputs, base: BaseModel | None, *,
            on_note=lambda _m: None) -> Prepared:
    toy = base is None or (base.parameters is not None and base.parameters < TOY_MODEL)
    if base is not None:
        license = project.base_model_license or (
            f"{base.license} ({base.license_name})" if base.license == "other" and base.license_name
            else base.license)
        project = dataclasses.replace(project, base_model_license=license,
                                      base_model_id=base.hub_id)
    if toy:  # the demo's settings are TrainConfig's own; its base writes the format already
        return Prepared(project, inputs, base, None)
    fitted = _fit(project, inputs, base)
    for warning in fitted.warnings:
        on_note(f"warning: {warning}")
    project = dataclasses.replace(project, train=fitted.config)
    if inputs.sft_examples is None and project.warm_start != "never":
        from edgetune.training.warmstart import warm_start_examples, warm_start_steps

        examples = warm_start_examples(inputs.splits.train, system_prompt=project.system_prompt,
                                       answer_format=project.train.answer_format)
        inputs = dataclasses.replace(
            inputs, sft_examples=examples, warm_start=project.warm_start,
            sft_steps=warm_start_steps(len(examples), project.train.sft_batch_size),
            sft_learning_rate=fitted.sft_learning_rate)
    return Prepared(project, inputs, base, fitted)


def _fit(project: Project, inputs: BuildInputs, base: BaseModel) -> FittedSettings:
    from edgetune import hf
    from edgetune.conversations import formatted_answer
    from edgetune.training.defaults import FITTED, answer_lengths, fit_settings
    from edgetune.training.distributed import visible_gpus
    from edgetune.training.rewards import ANSWER_FORMATS

    explicit = dict(project.train_sources)
    lengths: list[int] = []
    if "max_completion_length" not in explicit:  # needs the tokenizer: only when it is fitted
        fmt = ANSWER_FORMATS[project.train.answer_format]
        tokenizer = hf.load_tokenizer(base.path)
        lengths = answer_lengths(tokenizer, (formatted_answer(r, fmt) for r in inputs.splits.train))
    cuda = not set(FITTED) <= set(explicit) and visible_gpus() > 0
    return fit_settings(project.train, parameters=base.parameters, cuda=cuda,
                        answer_token_lengths=lengths, explicit=explicit)
