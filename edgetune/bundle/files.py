"""What a bundle is made of: its file names and the dataclasses that describe its contents."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgetune import personas, report
from edgetune.errors import ConfigError

MANIFEST_FILE = "edgetune.json"
EVAL_FILE = "eval.json"
EVAL_TABLE_FILE = report.MARKDOWN_FILE
EVAL_CHART_FILE = report.CHART_FILE
REWARD_CHART_FILE = report.REWARD_CHART_FILE
REPORT_FILE = report.HTML_FILE
README_FILE = "README.md"


@dataclass(frozen=True)
class BundleModel:
    """One quantised GGUF going into the bundle."""

    quant: str
    source: Path
    architecture: str
    context_length: int
    ram_needed_bytes: int
    # A measured mix (edgetune.mix): its --tensor-type-file and the imatrix it was built with,
    # shipped under recipes/ so anyone can rebuild the file bit for bit from the F16 GGUF.
    recipe: Path | None = None
    imatrix: Path | None = None


RECIPES_DIR = "recipes"


@dataclass(frozen=True)
class BundleInfo:
    name: str
    bundle_id: str
    version: str
    creator_name: str
    base_model: str
    base_model_license: str
    chat_template: str
    stop_strings: tuple[str, ...]
    default_context: int
    system_prompt: str
    greeting: str
    training: dict
    eval_results: dict
    license_terms: str = "All rights reserved by the creator."
    sampling: dict = field(default_factory=lambda: {"temperature": 0.6, "top_p": 0.95})
    suggested_prompts: tuple[str, ...] = ()
    persona_name: str | None = None  # the name chat apps show; None: ``name``
    persona_description: str = ""
    bos_token: str | None = None  # the tokenizer's BOS text (LLMFarm needs it for some templates)
    hf_repo: str | None = None  # "user/repo" once published: PocketPal selects the model by it
    gated: bool = False  # the repo is gated: followers request access (the card's access form)
    licence_required: bool = False  # apps should ask for a follower licence (SPEC.md Licences)
    # The rows of the adapter's training_log.jsonl: reward.png and report.html show its rewards,
    # settings and warnings. (): no log (both files are still written, saying so).
    training_log: tuple[dict, ...] = ()

    def persona(self) -> personas.Persona:
        return personas.Persona(name=self.persona_name or self.name, system_prompt=self.system_prompt,
                                greeting=self.greeting, suggested_prompts=self.suggested_prompts,
                                description=self.persona_description)


@dataclass(frozen=True)
class VerifyResult:
    bundle_id: str
    version: str
    key_id: str
    files: int  # files checked: those covered by the signature (model.sig excluded) and present
    bytes: int  # their total size
    # Signed GGUF files that are absent: only ever non-empty after verify_bundle(partial=True)
    # (a download of some quants); the others were all present and checked.
    missing: tuple[str, ...] = ()


def gguf_file_name(name: str, quant: str) -> str:
    """``<name>-<quant>.gguf`` with both parts reduced to ``[A-Za-z0-9._-]``."""
    stem, q = (re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip(".-") for s in (name, quant))
    if not stem or not q:
        raise ConfigError(f"cannot derive a file name from name={name!r}, quant={quant!r}",
                          "Use letters, digits, '.', '_' or '-' in the model name and quant.")
    return f"{stem}-{q}.gguf"


def is_gguf(rel: str) -> bool:
    """True for a GGUF file's path, whatever the case of its suffix."""
    return rel.lower().endswith(".gguf")
