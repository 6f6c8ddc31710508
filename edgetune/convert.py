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

from edgetune import hf, llamacpp, turns
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
        if tokenizer_parity["not_end_of_generation"]:
            tokenizer_parity = _end_turns(model_dir, scratch / file, parity_texts, tokenizer_parity)
        report("checking logit parity")
        logit_parity = check_logit_parity(model_dir, scratch / file, parity_texts)
        artifact = GgufModel(path=scratch, file=file, architecture=arch,
                             tokenizer_parity=tokenizer_parity, logit_parity=logit_parity)
        artifact.save()
    return dataclasses.replace(artifact, path=out)


def _end_turns(model_dir: Path, gguf: Path, texts: Sequence[str], parity: dict) -> dict:
    """Make the template's end of turn end generation in the GGUF, then check again."""
    tokenizer = hf.load_tokenizer(model_dir)
    end = parity["end_of_turn"]
    if end and end in parity["not_end_of_generation"]:
        mark_end_of_turn(gguf, tokenizer.convert_tokens_to_ids(end))
        parity = check_tokenizer_parity(model_dir, gguf, texts)
    if parity["not_end_of_generation"]:
        raise ParityError(
            f"llama.cpp would not stop generating at {', '.join(parity['not_end_of_generation'])} "
            f"in the converted model: answers would run on into a made-up next turn",
            hint="check eos_token in tokenizer_config.json and eos_token_id in generation_config.json")
    return parity


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
    """HF token ids must equal llama.cpp's on every text, without and with the special tokens the
    tokenizer adds (BOS), and on a conversation rendered by each side's chat template; EOS and the
    template's end of turn must both end generation in llama.cpp."""
    tokenizer = hf.load_tokenizer(model_dir)
    llm = llamacpp.open_gguf(gguf, vocab_only=True)
    try:
        for text in texts:
            _same_ids(text, tokenizer(text, add_special_tokens=False)["input_ids"],
                      llm.tokenize(text.encode(), add_bos=False, special=True))
        # add_bos=True asks llama.cpp for what its vocab adds (BOS when add_bos_token is set).
        plain = texts[0].removeprefix(tokenizer.bos_token or "\0")  # a chat text may open with BOS
        with_special = tokenizer(plain)["input_ids"]
        _same_ids(plain, with_special, llm.tokenize(plain.encode(), add_bos=True, special=True),
                  what="with the tokenizer's own special tokens (BOS)")
        add_bos = tokenizer.bos_token_id is not None and with_special[:1] == [tokenizer.bos_token_id]
        eos_hf = tokenizer.eos_token_id
        eos_cpp = llm.token_eos()
        if eos_hf is not None and eos_hf != eos_cpp:
            raise ParityError(f"EOS differs: HF {eos_hf}, GGUF {eos_cpp}",
                              hint="set eos_token in tokenizer_config.json and generation_config.json")
        template = llm.metadata.get("tokenizer.chat_template")
        if getattr(tokenizer, "chat_template", None) and not template:
            raise ParityError("the chat template was lost in conversion",
                              hint="put the template in tokenizer_config.json or chat_template.jinja")
        chat_tokens = _chat_parity(tokenizer, llm, gguf, texts) if template else 0
        end = turns.end_of_turn(tokenizer)
        not_eog = [s for s in turns.stop_strings(tokenizer)
                   if not _is_eog(llm, tokenizer.convert_tokens_to_ids(s))]
    finally:
        llm.close()
    return {"texts": len(texts), "eos_token_id": eos_cpp, "chat_template": bool(template),
            "add_bos": add_bos, "chat_tokens": chat_tokens,
            "end_of_turn": end, "not_end_of_generation": not_eog}


def _same_ids(text: str, hf_ids: list[int], cpp_ids: list[int], what: str = "") -> None:
    if hf_ids == cpp_ids:
        return
    at = next((i for i, (a, b) in enumerate(zip(hf_ids, cpp_ids)) if a != b),
              min(len(hf_ids), len(cpp_ids)))
    raise ParityError(
        f"tokenizer parity failed: HF and llama.cpp tokenise {text[:40]!r} differently"
        f"{' ' + what if what else ''} at token {at} "
        f"(HF {hf_ids[at:at + 3]}, llama.cpp {cpp_ids[at:at + 3]})",
        hint="the GGUF would not read text the way the model was trained; check the tokenizer "
             "files (tokenizer.model, tokenizer_config.json added_tokens_decoder, add_bos_token)",
    )


def _chat_parity(tokenizer, llm, gguf: Path, texts: Sequence[str]) -> int:
    """A conversation rendered by HF's template and by llama.cpp's (as llama-cpp-python's chat
    handler renders it for the phone-side apps) must be the same text and the same ids."""
    from jinja2 import TemplateError

    from edgetune.chat import chat_formatter

    question = texts[0][:200]
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": "<reasoning>Two steps.</reasoning><answer>4</answer>"},
                {"role": "user", "content": "And again?"}]
    try:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:  # a template that refuses a system message
        messages = messages[1:]
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = chat_formatter(llm, gguf)(messages=messages).prompt
    if rendered != expected:
        at = next((i for i, (a, b) in enumerate(zip(expected, rendered)) if a != b),
                  min(len(expected), len(rendered)))
        raise ParityError(
            f"the GGUF's chat template renders a conversation differently from the HF model's at "
            f"character {at} (HF {expected[at:at + 20]!r}, GGUF {rendered[at:at + 20]!r})",
            hint="check bos_token/eos_token in tokenizer_config.json: the template writes them")
    hf_ids = tokenizer(expected, add_special_tokens=False)["input_ids"]
    _same_ids(expected, hf_ids, llm.tokenize(rendered.encode(), add_bos=False, special=True),
              what="in a rendered chat")
    return len(hf_ids)


def _is_eog(llm, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def mark_end_of_turn(gguf: Path, token_id: int) -> None:
    """Declare ``token_id`` the GGUF's end-of-turn token (``tokenizer.ggml.eot_token_id``), so
    llama.cpp and the apps built on it end generation there. llama.cpp recognises the common
    end-of-turn texts itself; this is for a template whose end of turn it does not know. Done
    with gguf-py's own metadata rewriter (a full copy of the file, then an atomic replace)."""
    tmp = gguf.with_name(gguf.name + ".eot")
    proc = llamacpp.run_tool([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", gguf, tmp,
                              "--special-token-by-id", "eot", str(token_id), "--force"])
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        raise ToolchainError(f"could not set the end-of-turn token in {gguf.name}: {tail}",
                             hint="rerun with EDGETUNE_DEBUG=1 and report the output")
    tmp.replace(gguf)


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
