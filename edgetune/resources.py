"""Files edgetune ships beside its code, found the same way in a checkout and in an installed
wheel (``importlib.resources``).

In the repository the target profiles and the bundle schema live where people look for them,
``quant_profiles/`` and ``mobile_bundle/`` at the top level; ``edgetune/resources/`` links to
them, and building the wheel copies the linked files in as package data.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _packaged(*parts: str) -> Path:
    # Wheels are installed unzipped, so the traversable is a real path on disk.
    return Path(str(files("edgetune").joinpath(*parts)))


def profiles_dir() -> Path:
    """``quant_profiles/``: one YAML file per target (phone, tablet, desktop...)."""
    return _packaged("resources", "quant_profiles")


def bundle_schema() -> Path:
    """The JSON Schema of a bundle's ``edgetune.json`` (``mobile_bundle/edgetune.schema.json``)."""
    return _packaged("resources", "edgetune.schema.json")


def templates_dir() -> Path:
    """What ``edgetune init`` writes: ``edgetune.yaml`` and ``gitignore``."""
    return _packaged("templates")


def demo_data() -> Path:
    """The built-in demo's questions."""
    return _packaged("demo", "data", "questions.jsonl")


def general_english() -> str:
    """A general-English evaluation text (about 4,000 tokens; CC0/public domain, see
    ``resources/general_english.NOTICE``): fidelity is measured on it beside the held-out rows."""
    return _packaged("resources", "general_english.txt").read_text(encoding="utf-8")
