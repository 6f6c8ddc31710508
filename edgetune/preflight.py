"""Before any work: check what a build will need, and fit its settings to the real model.

A build that fails after an hour of training for a reason knowable in the first second (a
mistyped folder, a hub id with no network, an unwritable output folder, a key with the wrong
passphrase, a base model whose licence nobody stated) wastes the creator's evening. ``check``
runs those checks first. ``prepare`` then turns the project into the one the stages build: the
training settings not given fitted to the model, device and data (``training.defaults``), the
creator and base licence settled, and the format warm start set up where a pretrained base
needs it (``training.warmstart``). ``edgetune status`` calls ``prepare`` too, so it plans the
same stages as the build.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from edgetune.basemodel import BaseModel
from edgetune.errors import ConfigError, OutputExistsError
from edgetune.project import Project
from edgetune.stages import BuildInputs
from edgetune.training.defaults import TOY_MODEL, FittedSettings


@dataclass(frozen=True)
class Prepared:
    project: Project  # the settings the stages use
    inputs: BuildInputs  # with the warm start's examples when it applies
    base: BaseModel | None  # None: the built-in demo model
    fitted: FittedSettings | None  # None: no setting fitted (the demo, or a tiny test model)


def check_output(out: Path) -> None:
    """The output folder can be created and written (not a file, not read-only)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file", hint="choose a folder for --out")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {parent}",
                          hint="choose an --out folder you can write to")


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


def check_key(private_key: Path, passphrase: str | None) -> None:
    """An existing signing key loads with this passphrase (a wrong one fails now, not after
    training)."""
    from edgetune.keys import load_private_key

    if Path(private_key).is_file():
        load_private_key(Path(private_key), passphrase)


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
