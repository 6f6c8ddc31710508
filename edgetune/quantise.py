"""quantise: one F16 GGUF -> Q4_K_M, Q5_K_M, Q8_0 ... with llama.cpp's quantiser, in-process."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetune.artifacts import GgufModel, QuantizedModels, atomic_dir
from edgetune.errors import ConfigError, ToolchainError
from edgetune.llamacpp import QUANT_TYPES
from edgetune.mix import MIX
from edgetune.profiles import QuantProfile

# GGML tensor types a K-quant silently falls back to when a row is not a multiple of 256.
_FALLBACK_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def quantise(gguf: GgufModel, profile: QuantProfile, out: Path, *, name: str,
             imatrix_texts: Sequence[str] = (), overwrite: bool = False,
             on_progress: Callable[[str, int, int], None] | None = None) -> QuantizedModels:
    """Write ``out/<name>-<QUANT>.gguf`` for each of the profile's quants and report K-quant
    fallbacks.

    With ``imatrix_texts`` (calibration text), the profile's ``imatrix_quants`` are built with a
    domain importance matrix; the same quant without it goes to ``out/without-imatrix/`` so
    evaluation can report both.
    """
    from edgetune.imatrix import compute_imatrix, quantise_with_imatrix

    quants = profile.quants
    unknown = [q for q in quants if q not in QUANT_TYPES]
    if unknown:
        raise ConfigError(f"unknown quant type {', '.join(unknown)}",
                          hint=f"choose from {', '.join(QUANT_TYPES)}")
    files: dict[str, str] = {}
    fallbacks: dict[str, int] = {}
    mix: dict[str, dict] = {}
    without: dict[str, str] = {}
    if MIX in quants and not imatrix_texts:
        raise ConfigError(f"{MIX} is chosen on the calibration rows, and this build has none",
                          hint=f"add rows to the data (a share becomes calibration) or remove "
                               f"{MIX} from the target's quants")
    calibrated = [q for q in quants if q in profile.imatrix_quants or q == MIX] \
        if imatrix_texts else []
    recipes: dict[str, dict] = {}
    # The mix is chosen last: its budget and its comparison are plain Q4_K_M's.
    order = [q for q in quants if q != MIX] + [q for q in quants if q == MIX]
    with atomic_dir(out, overwrite=overwrite) as scratch:
        imatrix = compute_imatrix(gguf.gguf, imatrix_texts, scratch / "imatrix.gguf") if calibrated else None
        for i, quant in enumerate(order):
            if on_progress:
                on_progress(quant, i, len(quants))
            file = f"{name}-{quant}.gguf"
            if quant == MIX:
                recipes[quant] = build_mix(gguf.gguf, imatrix, imatrix_texts, profile, scratch,
                                           file, reference=scratch / files.get("Q4_K_M", ""),
                                           on_progress=on_progress)
            elif quant in calibrated:
                quantise_with_imatrix(gguf.gguf, scratch / file, quant, imatrix)
                without[quant] = f"without-imatrix/{file}"
                (scratch / "without-imatrix").mkdir(exist_ok=True)
                quantise_file(gguf.gguf, scratch / without[quant], quant)
            else:
                quantise_file(gguf.gguf, scratch / file, quant)
            files[quant] = file
            mix[quant] = tensor_mix(scratch / file, quant)
            fallbacks[quant] = mix[quant]["fell_back"]
        files = {q: files[q] for q in quants}  # the profile's order
        artifact = QuantizedModels(path=scratch, source_gguf=str(gguf.gguf), files=files,
                                   fallbacks=fallbacks, imatrix=imatrix.name if imatrix else "",
                                   without_imatrix=without, mix=mix, recipes=recipes)
        artifact.save()
    return dataclasses.replace(artifact, path=out)


def build_mix(f16: Path, imatrix: Path, calibration: Sequence[str], profile: QuantProfile,
              folder: Path, file: str, *, reference: Path,
              on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Search the tensor types of Q4_K_X under the profile's budget, write its recipe beside it
    and build it from that recipe exactly as a reader would rebuild it."""
    from edgetune import mix as mixing
    from edgetune.fidelity import chat_tokens

    budget = mix_budget_bytes(f16, imatrix, profile, reference, folder)
    tokens = chat_tokens(f16, calibration)
    # The name the bundle ships it under (llama-quantize records it in the file).
    named = folder / mixing.imatrix_name()
    shutil.copyfile(imatrix, named)
    work = folder / "mix-search"
    work.mkdir(exist_ok=True)
    try:
        found = mixing.search(f16, named, tokens, profile.mix_types, budget, work,
                              n_ctx=profile.eval_context, on_progress=on_progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    recipe = mixing.write_recipe(found.assignment, folder / mixing.recipe_name())
    mixing.quantise_recipe(f16, folder / file, recipe, named)
    return {"tensor_types": recipe.name, "imatrix": named.name, "base_ftype": mixing.BASE_FTYPE,
            "budget": profile.mix_budget, "search": found.summary(),
            "command": mixing.rebuild_command(f16.name, named.name, recipe.name, file)}


def mix_budget_bytes(f16: Path, imatrix: Path, profile: QuantProfile, reference: Path,
                     folder: Path) -> int:
    """The mix's size budget in bytes: plain Q4_K_M's file size (built here when the profile
    does not build it), the profile's RAM budget less what the context needs besides the
    weights, or a size given as such."""
    from edgetune.ram import RAM_MARGIN, ram_needed
    from edgetune.imatrix import quantise_with_imatrix
    from edgetune.profiles import parse_size_budget

    budget = parse_size_budget(profile.mix_budget)
    if isinstance(budget, int):
        return budget
    if not reference.is_file():
        reference = folder / "mix-reference-Q4_K_M.gguf"
        quantise_with_imatrix(f16, reference, "Q4_K_M", imatrix)
    try:
        size = reference.stat().st_size
        if budget == "Q4_K_M":
            return size
        # ram: the largest file whose (file + KV cache + buffers) x margin fits the budget
        return int((profile.memory_budget_bytes - ram_needed(reference, profile.context_length))
                   / RAM_MARGIN) + size
    finally:
        if reference.name.startswith("mix-reference-"):
            reference.unlink(missing_ok=True)


def quantise_file(src: Path, dst: Path, quant: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = 0  # all cores
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ToolchainError(f"llama.cpp failed to quantise {src.name} to {quant} (code {rc})",
                             hint="check free disk space and that the F16 GGUF loads")


def count_fallbacks(path: Path, quant: str) -> int:
    """How many weight matrices did not get the K-quant type asked for (rows not 256-aligned)."""
    return tensor_mix(path, quant)["fell_back"]


def tensor_mix(path: Path, quant: str) -> dict:
    """What llama.cpp really built for ``quant``: the weight matrices, how many of them fell back
    from a K-quant to a legacy type (rows not a multiple of 256: "Q4_K_M" can be mostly q5_0 on a
    576-wide model), and the file's real bits per weight over every tensor."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    matrices = [t for t in reader.tensors if len(t.shape) >= 2]
    fell_back = (sum(t.tensor_type.name in _FALLBACK_TYPES for t in matrices)
                 if "_K" in quant and quant != MIX else 0)  # the mix chooses, it never falls back
    weights = sum(int(t.n_elements) for t in reader.tensors)
    stored = sum(int(t.n_bytes) for t in reader.tensors)
    return {"matrices": len(matrices), "fell_back": fell_back,
            "bits_per_weight": round(8 * stored / weights, 3) if weights else None}
