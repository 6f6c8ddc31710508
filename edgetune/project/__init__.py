"""The project file: ``edgetune.yaml`` holds what to build, so a build is one short command.

This module holds the data model: the pipeline's ``Project`` and the ``ProjectFile`` a project
file resolves to. Reading one is ``edgetune.project.load`` (precedence: command line > project
file > defaults, where the defaults are those of a build without a file, the built-in demo), its
keys and their checks are ``edgetune.project.schema``, and ``edgetune.project.init`` writes a
documented example project. Paths in the file are relative to the file's folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import resources
from edgetune.data import Columns
from edgetune.training.config import TrainConfig

PROJECT_FILE = "edgetune.yaml"
TEMPLATES = resources.templates_dir()
DEFAULT_TARGETS = ("phone",)
DEFAULT_LICENSE_TERMS = "All rights reserved by the creator."  # BundleInfo's default


@dataclass(frozen=True)
class Publish:
    """Where the bundle goes on the Hugging Face Hub: recorded in the bundle at build time, and
    ``edgetune publish``'s default repo and access (gated: manual approval)."""

    repo: str  # "user/name"
    private: bool = True
    gated: bool | str = False  # False, "auto" or "manual", as the Hub's gated setting


@dataclass(frozen=True)
class Project:
    """What to build: the creator's data, base model, persona and training settings."""

    name: str
    data: Path
    base_model: str | None = None  # None: the built-in demo base model
    columns: Columns = Columns()
    system_prompt: str = ""
    greeting: str = "Hi! Ask me a question."
    suggested_prompts: tuple[str, ...] = ()  # shown as starters by phone apps (persona files)
    creator: str = "edgetune user"
    base_model_license: str | None = None  # None: read from the base model's card (README.md)
    base_model_id: str | None = None  # the Hub id of a local base folder, for the model card
    version: str = "0.1.0"
    eval_fraction: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    sft_data: Path | None = None  # <think>-style examples for an SFT warm start before GRPO
    sft_format: str = "auto"
    sft_steps: int = 60
    license_terms: str = "All rights reserved by the creator."
    persona_name: str | None = None  # the name chat apps show; None: the project's name
    persona_description: str = ""  # one line for app lists, never sent to the model
    publish: Publish | None = None  # the Hub repo the bundle is for: stamped into its manifest
    # Teach the answer format with a short SFT before GRPO: "auto" when a probe of the base
    # model finds it almost never writes it (pretrained models only), "always" or "never".
    warm_start: str = "auto"
    # Where each training setting given came from ("flag" or "project file"); the others are
    # edgetune's defaults, fitted to the model (training.defaults). Not part of any stage key.
    train_sources: tuple[tuple[str, str], ...] = ()


def demo_project() -> Project:
    from edgetune.demo import DEMO_DATA, DEMO_NAME, SYSTEM_PROMPT

    return Project(name=DEMO_NAME, data=DEMO_DATA, system_prompt=SYSTEM_PROMPT,
                   greeting="Hi! Ask me which number is larger, or a short word problem.",
                   suggested_prompts=("Which is larger, 9.9 or 9.11?",
                                      "It is 3 degrees and drops by 8. What is it now?"),
                   creator="edgetune demo", base_model_license="apache-2.0",
                   train=TrainConfig(system_prompt=SYSTEM_PROMPT))


@dataclass(frozen=True)
class ProjectFile:
    """A resolved project: what ``build`` needs, and what the file (and command line) set."""

    project: Project
    targets: tuple[str, ...] = DEFAULT_TARGETS  # profile names or profile YAML paths; first is built
    publish: Publish | None = None
    license_terms: str = DEFAULT_LICENSE_TERMS
    persona_name: str = ""  # the name chat apps show; defaults to project.name
    persona_description: str = ""
    path: Path | None = None  # the project file; None when there is none
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)  # "section.key": value
