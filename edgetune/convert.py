"""convert: a merged Hugging Face model -> one F16 GGUF, proven equal to the HF model.

Conversion is llama.cpp's own ``convert_hf_to_gguf.py`` (pinned, see ``edgetune.llamacpp``).
Two checks then fail the build, because a GGUF that silently differs from the trained model is
the most common way exported models break (lost chat template or EOS, a wrong tokenizer):
tokenizer parity (HF ids == llama.cpp ids on sample texts) and logit parity (mean KL divergence
and top-1 agreement of the F16 GGUF against the HF model on the same tokens).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetune import hf, llamacpp
from edgetune.artifacts import GgufModel, MergedModel, atomic_dir
from edgetune.errors import ModelError, ParityError, ToolchainError

MAX_MEAN_KLD = 1e-3
MIN_TOP1 = 0.99
LOGIT_TOKENS = 256


def convert(merged: MergedModel, out: Path, *, name: str, parity_texts: Sequence[str],
            overwrite: bool = False, on_progress: Callable[[str], None] | None = None) -> GgufModel:
    """Convert ``merged`` to ``out/<name>-F16.gguf`` and run both parity checks."""
    report = on_progress or (lambda _msg: None)
    model_dir = merged.path
    arch = hf.architecture(model_dir)
    file = f"{name}-F16.gguf"
    with atomic_dir(out, overwrite=overwrite) as scratch:
        report("converting to F16 GGUF with llama.cpp's converter")
        run_converter(model_dir, scratch / file)
        report("checking tokenizer parity")
        tokenizer_parity = check_tokenizer_parity(model_dir, scratch / file, parity_texts)
        report("checking logit parity")
        logit_parity = check_logit_parity(model_dir, scratch / file, parity_texts)
        artifact = GgufModel(path=scratch, file=file, architecture=arch,
                             tokenizer_parity=tokenizer_parity, logit_parity=logit_parity)
        artifact.save()
    return dataclasses.replace(artifact, path=out)


def run_converter(model_dir: Path, outfile: Path) -> None:
    script = llamacpp.converter_dir() / "convert_hf_to_gguf.py"
    proc = llamacpp.run_tool([sys.executable, script, model_dir, "--outfile", outfile,
                              "--outtype", "f16"])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        detail = " | ".join(tail) or f"exit code {proc.returncode}"
        if "not supported" in detail or "pre-tokenizer was not recognized" in detail:
            raise ModelError(f"llama.cpp cannot convert {model_dir}: {detail}",
                             hint="use a model whose architecture and tokenizer llama.cpp supports")
        raise ToolchainError(f"GGUF conversion of {model_dir} failed: {detail}",
                             hint="rerun with EDGETUNE_DEBUG=1 and report the converter output")


def check_tokenizer_parity(model_dir: Path, gguf: Path, texts: Sequence[str]) -> dict:
    """HF token ids must equal llama.cpp's on every text; chat template and EOS must survive."""
    tokenizer = hf.load_tokenizer(model_dir)
    llm = llamacpp.open_gguf(gguf, vocab_only=True)
    try:
        for text in texts:
            hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            cpp_ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            if hf_ids != cpp_ids:
                at = next((i for i, (a, b) in enumerate(zip(hf_ids, cpp_ids)) if a != b),
                          min(len(hf_ids), len(cpp_ids)))
                raise ParityError(
                    f"tokenizer parity failed: HF and llama.cpp tokenise {text[:40]!r} differently "
                    f"at token {at} (HF {hf_ids[at:at + 3]}, llama.cpp {cpp_ids[at:at + 3]})",
                    hint="the GGUF would not read text the way the model was trained; check the "
                         "tokenizer files (tokenizer.model, tokenizer_config.json added_tokens_decoder)",
                )
        eos_hf = tokenizer.eos_token_id
        eos_cpp = llm.token_eos()
        if eos_hf is not None and eos_hf != eos_cpp:
            raise ParityError(f"EOS differs: HF {eos_hf}, GGUF {eos_cpp}",
                              hint="set eos_token in tokenizer_config.json and generation_config.json")
        template = llm.metadata.get("tokenizer.chat_template")
        if getattr(tokenizer, "chat_template", None) and not template:
            raise ParityError("the chat template was lost in conversion",
                              hint="put the template in tokenizer_config.json or chat_template.jinja")
    finally:
        llm.close()
    return {"texts": len(texts), "eos_token_id": eos_cpp, "chat_template": bool(template)}


def check_logit_parity(model_dir: Path, gguf: Path, texts: Sequence[str],
                       n_tokens: int = LOGIT_TOKENS) -> dict:
    """Mean KLD(HF || GGUF) and top-1 agreement over ``n_tokens`` positions."""
    import numpy as np
    import torch

    tokenizer = hf.load_tokenizer(model_dir)
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    ids = ids[:n_tokens]
    if len(ids) < 16:
        raise ParityError("too little sample text for the logit parity check",
                          hint="provide evaluation data with at least a few questions")
    hf_logits = reference_logits(model_dir, ids)
    llm = llamacpp.open_gguf(gguf, n_ctx=max(512, len(ids)), logits_all=True)
    try:
        llm.eval(ids)
        cpp_logits = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float64))
    finally:
        llm.close()
    p = torch.log_softmax(hf_logits, -1)
    q = torch.log_softmax(cpp_logits, -1)
    kld = (p.exp() * (p - q)).sum(-1)
    result = {
        "tokens": len(ids),
        "mean_kld": float(kld.mean()),
        "top1": float((hf_logits.argmax(-1) == cpp_logits.argmax(-1)).double().mean()),
    }
    if result["mean_kld"] > MAX_MEAN_KLD or result["top1"] < MIN_TOP1:
        raise ParityError(
            f"logit parity failed: mean KLD {result['mean_kld']:.2e} (max {MAX_MEAN_KLD:g}), "
            f"top-1 agreement {result['top1']:.1%} (min {MIN_TOP1:.0%})",
            hint="the F16 GGUF does not reproduce the model; check the architecture is supported "
                 "by this llama.cpp version",
        )
    return result


def reference_logits(model_dir: Path, ids: list[int]):
    """The HF model's float64 logits for ``ids``, computed with plain transformers on CPU.

    When Unsloth has been imported in this process (a GPU training run), it has replaced the
    model classes' forward with its own CUDA kernels, so the reference is computed in a clean
    child process instead: the parity check must compare against stock transformers.
    """
    import torch

    if "unsloth" not in sys.modules:
        return hf_logits(model_dir, ids)
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.pt"
        code = ("import json, sys, torch; from edgetune.convert import hf_logits; "
                "torch.save(hf_logits(sys.argv[1], json.loads(sys.argv[2])), sys.argv[3])")
        subprocess.run([sys.executable, "-c", code, str(model_dir), json.dumps(ids), str(out)],
                       check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        return torch.load(out)


def hf_logits(model_dir, ids):
    import torch

    model = hf.load_causal_lm(Path(model_dir)).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()
