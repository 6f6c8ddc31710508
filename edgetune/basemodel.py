"""What the base model is: where its files are, its Hub id, its licence, its size.

Read once, before any work (``preflight``), so a mistyped folder or an unreachable hub id fails
in the first second with the right hint, and the model card states the true base and licence
instead of a local path and a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import ModelError

# huggingface_hub's repo id rules (validate_repo_id): "owner/name", word characters, '-' and
# '.', no "--" or "..", no '-' or '.' at either end of a part, names of at most 96 characters.
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+", re.ASCII)
_HUB_ID_BAD = re.compile(r"--|\.\.|(^|/)[.-]|[.-](/|$)")
# A snapshot in the Hugging Face cache: .../models--<owner>--<name>/snapshots/<revision>
_CACHE_DIR = re.compile(r"models--([\w.-]+?)--([\w.-]+)$", re.ASCII)


def is_hub_id(value: object) -> bool:
    """True when ``value`` can be a Hub model id (``owner/name``), e.g. ``Qwen/Qwen3-0.6B``."""
    return isinstance(value, str) and _HUB_ID.fullmatch(value) is not None \
        and not _HUB_ID_BAD.search(value) and len(value.split("/")[1]) <= 96


def looks_like_path(value: str) -> bool:
    """``./model``, ``../m``, ``/abs``, ``~/m``, ``C:\\m``, ``a/b/c``: meant as a folder, never a
    hub id, so a missing one is "no such folder", not "download it"."""
    return (value.startswith((".", "/", "~", "\\")) or "\\" in value or ":" in value
            or value.count("/") != 1 or not is_hub_id(value))


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model."""

    path: Path
    hub_id: str | None  # "Qwen/Qwen2.5-3B-Instruct" when known, else None
    license: str | None  # SPDX-ish id from the model card ("apache-2.0", "other"...), else None
    license_name: str | None = None  # the card's license_name when license is "other"
    parameters: int | None = None  # from config.json; None when it cannot be worked out


def resolve(name_or_path: str, *, hub_id: str | None = None) -> BaseModel:
    """A local folder, or a hub id from the Hugging Face cache (downloaded when the hub is
    reachable); with its hub id and licence as far as the files tell."""
    from edgetune import hf

    path = Path(name_or_path).expanduser()
    if not path.exists() and looks_like_path(name_or_path):
        raise ModelError(f"no such folder: {name_or_path}",
                         hint="check the path to the base model folder (it holds config.json and "
                              "*.safetensors), or give a hub id like Qwen/Qwen2.5-1.5B-Instruct")
    folder = hf.resolve_model(name_or_path)
    check_complete(folder)
    if hub_id is not None and not is_hub_id(hub_id):
        raise ModelError(f"'{hub_id}' is not a Hugging Face model id",
                         hint="give it as owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    known = hub_id or (name_or_path if not path.exists() and is_hub_id(name_or_path) else None) \
        or hub_id_of(folder)
    license, license_name = card_license(folder)
    return BaseModel(path=folder, hub_id=known, license=license, license_name=license_name,
                     parameters=parameter_count(folder))


def check_complete(folder: Path) -> None:
    """config.json with a model_type, and weights: what training and conversion both need."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{folder}/config.json cannot be read ({exc})",
                         hint="check the model folder is complete (download it again)") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelError(f"{folder}/config.json has no model_type",
                         hint="the folder is not a complete Hugging Face model; download it again")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelError(f"{folder} has a config.json but no weights (*.safetensors)",
                         hint="the download is incomplete: fetch the model again with "
                              "`hf download <model>`")


def hub_id_of(folder: Path) -> str | None:
    """The hub id a local folder came from, when its location or config says so: a snapshot in
    the Hugging Face cache, or a config.json whose ``_name_or_path`` is a hub id."""
    folder = Path(folder).resolve()
    for part in (folder.parent.parent.name, folder.name):  # .../models--o--n/snapshots/<rev>
        if m := _CACHE_DIR.fullmatch(part):
            candidate = f"{m.group(1)}/{m.group(2)}"
            if is_hub_id(candidate):
                return candidate
    try:
        named = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return named if isinstance(named, str) and is_hub_id(named) and not Path(named).exists() \
        else None


def card_license(folder: Path) -> tuple[str | None, str | None]:
    """``license`` (and ``license_name``) from the YAML front matter of the folder's README.md,
    where every Hugging Face model card states it."""
    try:
        text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, None
    if not text.startswith("---"):
        return None, None
    end = text.find("\n---", 3)
    if end < 0:
        return None, None
    import yaml

    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None, None
    if not isinstance(meta, dict):
        return None, None
    license, name = meta.get("license"), meta.get("license_name")
    return (str(license) if isinstance(license, str) and license else None,
            str(name) if isinstance(name, str) and name else None)


def parameter_count(folder: Path) -> int | None:
    """Parameters of a decoder-only transformer from its config (embeddings counted once when
    tied): enough to pick training settings, no weights read."""
    try:
        c = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        c = c.get("text_config", c)  # gemma3 and other multimodal-style configs nest it
        hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
        vocab, inter = int(c["vocab_size"]), int(c["intermediate_size"])
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or hidden // heads)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    attention = hidden * head_dim * (heads * 2 + kv * 2)
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings", False) else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden
