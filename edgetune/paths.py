"""Where edgetune keeps things between runs: ``$EDGETUNE_HOME`` (default ``~/.edgetune``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("EDGETUNE_HOME") or "~/.edgetune").expanduser()


def cache_dir() -> Path:
    return home() / "cache"


def keys_dir() -> Path:
    return home() / "keys"


def revocations_dir() -> Path:
    """The newest revocation-list sequence seen, one small file per creator key
    (``edgetune.licences.floor``)."""
    return home() / "revocations"
