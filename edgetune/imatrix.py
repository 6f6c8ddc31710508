"""A domain importance matrix: which weights matter on the creator's own text.

Computed by llama.cpp's ``llama-imatrix`` on the calibration split (part of the training rows,
never the held-out eval rows: calibrating on the evaluation text would flatter the quant), then
handed to ``llama-quantize --imatrix`` for the low-bit quants. llama.cpp reports ~10% lower KLD
for Q4_K_M with an imatrix on LLaMA-3-8B; edgetune measures it on every build (eval.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgetune import llamacpp
from edgetune.errors import ToolchainError


def compute_imatrix(f16: Path, texts: Sequence[str], out: Path, *, n_ctx: int = 512) -> Path:
    """Write the importance matrix of ``f16`` over ``texts`` to ``out`` (GGUF format)."""
    text_file = out.with_suffix(".txt")
    text_file.write_text("\n\n".join(texts))
    binary, env = llamacpp.tool("llama-imatrix")
    try:
        run = llamacpp.run_tool([binary, "-m", f16, "-f", text_file, "-o", out, "-c", n_ctx,
                                 "-t", llamacpp.threads(), "--no-ppl", "--parse-special"],
                                env=env)  # chats read as at chat time: special tokens as tokens
    finally:
        text_file.unlink(missing_ok=True)
    if run.returncode != 0 or not out.is_file():
        tail = " ".join((run.stderr or run.stdout).strip().splitlines()[-2:])
        raise ToolchainError(f"llama-imatrix failed on {f16.name}: {tail}",
                             hint="check the calibration rows are long enough for one "
                                  f"{n_ctx}-token chunk")
    return out


def quantise_with_imatrix(src: Path, dst: Path, quant: str, imatrix: Path) -> None:
    """``llama-quantize --imatrix``: llama-cpp-python's in-process call takes the matrix only as
    raw arrays, so the tool reads the file itself."""
    binary, env = llamacpp.tool("llama-quantize")
    run = llamacpp.run_tool([binary, "--imatrix", imatrix, src, dst, quant], env=env)
    if run.returncode != 0 or not dst.is_file():
        tail = " ".join((run.stderr or run.stdout).strip().splitlines()[-2:])
        raise ToolchainError(f"llama-quantize --imatrix failed for {quant}: {tail}",
                             hint="check free disk space and that the F16 GGUF loads")
