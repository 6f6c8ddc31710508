"""Loading Hugging Face models and tokenizers the way the rest of the pipeline will read them."""

from __future__ import annotations

import json
from pathlib import Path

from edgetune.errors import ModelError

# HF architecture -> family name. Conversion to GGUF is done by llama.cpp's converter, which
# supports many more; these are the ones edgetune tests end to end (tiny models of each).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
}

_MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def resolve_model(name_or_path: str) -> Path:
    """A local model directory for a path or a hub id (from the HF cache, or downloaded)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json",
                             hint="point --base-model at a Hugging Face model directory")
        return path
    if path.exists() or name_or_path.count("/") != 1:
        raise ModelError(f"model '{name_or_path}' not found",
                         hint="pass a local model directory or a hub id like Qwen/Qwen2.5-3B-Instruct")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=_MODEL_FILES))
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        raise ModelError(
            f"cannot get model '{name_or_path}' from the Hugging Face cache or hub ({type(exc).__name__})",
            hint=f"on a machine with network run `hf download {name_or_path}`, or pass a local path",
        ) from exc


def architecture(model_dir: Path) -> str:
    """The HF architecture name, refusing ones edgetune does not support."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{model_dir}/config.json cannot be read ({exc})",
                         hint="check the model directory is complete") from exc
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch
    raise ModelError(
        f"unsupported architecture {', '.join(archs) or '(none given)'} in {model_dir}/config.json",
        hint=f"edgetune supports {', '.join(SUPPORTED_ARCHITECTURES)}",
    )


def refuse_prequantized(model_dir: Path) -> None:
    """Refuse a base stored already quantised (e.g. ``unsloth/...-bnb-4bit``).

    edgetune merges the LoRA into the real 16-bit weights; a 4-bit copy has lost them (merging
    into it is how merged models end up worse than their adapter, unsloth#1519). Unsloth
    quantises a 16-bit base on load just as fast, so the 16-bit model is all we need.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise ModelError(
            f"{model_dir} is stored already quantised ({method}); edgetune needs the 16-bit base",
            hint="pass the original model instead (e.g. Qwen/Qwen2.5-3B-Instruct, not "
                 "unsloth/Qwen2.5-3B-Instruct-bnb-4bit) and add --base-bits 4 to train it in 4-bit; "
                 "get it with `hf download <model>` on a machine with network",
        )


def load_tokenizer(model_dir: Path):
    """Load a tokenizer the way llama.cpp's converter will read it.

    The converter uses ``tokenizer.model`` (SentencePiece) whenever it exists. transformers 5
    ignores ``tokenizer_class`` for some model types (qwen2 is forced to a byte-level BPE class
    that cannot represent a SentencePiece vocab), so with a ``tokenizer.model`` we honour the
    class named in tokenizer_config.json. The tokenizer parity check after conversion proves
    both sides agree.
    """
    import transformers
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    config_file = model_dir / "tokenizer_config.json"
    if (model_dir / "tokenizer.model").is_file() and config_file.is_file():
        name = json.loads(config_file.read_text()).get("tokenizer_class") or ""
        cls = getattr(transformers, name.removesuffix("Fast"), None)
        if cls is not None:
            return cls.from_pretrained(model_dir)
    return AutoTokenizer.from_pretrained(model_dir)


def load_causal_lm(model_dir: Path, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "generation_config.json")
