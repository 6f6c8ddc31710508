"""Evaluate GGUF files already on disk (``edgetune eval``): the evaluate stage without a build.

Reads each GGUF's header first (quant type, architecture, tokenizer, chat template) and refuses
files that cannot be compared token by token with the reference before anything is measured.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetune.artifacts import EvalReport
from edgetune.data import QARow
from edgetune.errors import ConfigError, DataError, ModelError, OutputExistsError
from edgetune.conversations import conversation
from edgetune.events import BuildEvents, SilentEvents
from edgetune.profiles import QuantProfile

_REFERENCE_TYPES = ("F16", "BF16", "F32")  # what a quant can be compared against


@dataclass(frozen=True)
class GgufFile:
    """What ``edgetune eval`` needs to know about a GGUF before measuring it."""

    path: Path
    quant: str  # llama.cpp's file type (general.file_type: F16, Q4_K_M, ...) or from the name
    architecture: str
    vocab_sha256: str  # the tokenizer's tokens: a model and its quants share them
    chat_template: str
    special_tokens: dict  # bos_token, eos_token, ... as text, for the chat template


def read_gguf(path: Path) -> GgufFile:
    """Read a GGUF's header (no weights); ModelError for a missing or non-GGUF file."""
    import gguf

    from edgetune.llamacpp import NOT_GGUF, gguf_field, gguf_problem

    path = Path(path)
    if why := gguf_problem(path):
        raise ModelError(f"{path}: {why}", hint=(
            "Pass .gguf files made by llama.cpp (edgetune build writes them to gguf/ and quants/)."
            if why == NOT_GGUF else "Check the path; it is relative to the current directory."))
    try:
        reader = gguf.GGUFReader(str(path))
        kind = gguf_field(reader, "general.type") or "model"
        tokens_field = reader.fields.get("tokenizer.ggml.tokens")
        tokens = [bytes(tokens_field.parts[i]) for i in tokens_field.data] if tokens_field else []
        file_type = gguf_field(reader, "general.file_type")
        architecture = gguf_field(reader, "general.architecture") or ""
        template = gguf_field(reader, "tokenizer.chat_template") or ""
        special = {}
        for name in ("bos", "eos", "unknown", "padding"):
            token_id = gguf_field(reader, f"tokenizer.ggml.{name}_token_id")
            if token_id is not None and 0 <= int(token_id) < len(tokens):
                key = {"unknown": "unk", "padding": "pad"}.get(name, name) + "_token"
                special[key] = tokens[int(token_id)].decode("utf-8", "replace")
    except Exception as exc:  # a truncated or corrupt header: gguf-py raises anything
        raise ModelError(f"{path}: cannot read the GGUF header ({type(exc).__name__}: {exc})",
                         hint="The file is damaged or incomplete; copy or convert it again."
                         ) from None
    if kind != "model":
        raise ModelError(f"{path}: is a GGUF {kind}, not a model",
                         hint="Pass the F16 GGUF and quantised model GGUFs.")
    if not tokens:
        raise ModelError(f"{path}: has no tokenizer (tokenizer.ggml.tokens)",
                         hint="Convert the model with a tokenizer (edgetune build does).")
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(len(token).to_bytes(4, "little") + token)
    # A measured mix names itself (edgetune.mix.QUANT_KEY); its file type is Q4_K_M's.
    quant = gguf_field(reader, "edgetune.quant") or _quant_name(file_type, path)
    return GgufFile(path=path, quant=quant, architecture=architecture,
                    vocab_sha256=digest.hexdigest(), chat_template=template,
                    special_tokens=special)


def _quant_name(file_type, path: Path) -> str:
    """llama.cpp's name for ``general.file_type`` (``MOSTLY_Q4_K_M`` -> ``Q4_K_M``), else the
    longest such name that ends the file name, else the file name itself."""
    from gguf import LlamaFileType

    names = {t.value: t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in LlamaFileType
             if t is not LlamaFileType.GUESSED}
    if file_type is not None and int(file_type) in names:
        return names[int(file_type)]
    stem = path.stem.upper()
    found = [n for n in names.values() if stem == n or re.search(rf"[-_.]{n}$", stem)]
    return max(found, key=len) if found else path.stem


def render_chat(model: GgufFile, messages: list[dict]) -> str:
    """``messages`` through the GGUF's own chat template, as transformers renders a template."""
    import jinja2

    from edgetune.personas import render_chat_template

    if not model.chat_template:
        raise ModelError(f"{model.path}: has no chat template (tokenizer.chat_template)",
                         hint="Evaluate a chat model converted with its template (edgetune "
                              "build embeds it).")
    try:
        return render_chat_template(model.chat_template, messages, add_generation_prompt=False,
                                    **model.special_tokens)
    except jinja2.exceptions.TemplateError as exc:
        raise ModelError(f"{model.path}: its chat template fails ({exc})",
                         hint="Evaluate a GGUF whose chat template renders with transformers."
                         ) from None


def evaluate_ggufs(f16: Path, quants: Sequence[Path], out: Path, profile: QuantProfile, *,
                   rows: Sequence[QARow], system_prompt: str = "",
                   answer_format: str = "reasoning", overwrite: bool = False,
                   accept_gate_failure: bool = False,
                   events: BuildEvents | None = None) -> EvalReport:
    """The evaluate stage on GGUF files on disk: ``out/eval.json``, ``eval.md``, ``eval.png``.

    ``rows`` are the held-out questions: rendered as conversations through the F16 GGUF's chat
    template (the text ``build`` evaluates on) and asked as task questions. Fails before any
    measuring on bad files, quants that cannot be compared with ``f16`` or too little text;
    raises ``GateFailure`` after writing the report when a quant fails ``profile``'s gates and
    the failure is not accepted.
    """
    from edgetune.artifacts import GgufModel, QuantizedModels
    from edgetune.evaluate import evaluate
    from edgetune.fidelity import chat_tokens
    from edgetune.gates import GateFailure
    from edgetune.quantise import tensor_mix

    ev = events or SilentEvents()
    out = Path(out)
    reference, models = read_gguf(f16), [read_gguf(q) for q in quants]
    _check_comparable(reference, models)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists",
                                hint="choose another --out directory or pass --overwrite")
    if not rows:
        raise DataError("no held-out rows to evaluate on",
                        hint="pass --data with question/answer rows")
    texts = [render_chat(reference, conversation(system_prompt, r)) for r in rows]
    n_tokens = len(chat_tokens(reference.path, texts))
    if n_tokens < 2 * profile.eval_context:
        raise DataError(f"the {len(rows)} held-out rows make {n_tokens} tokens; measuring KL "
                        f"divergence at the target's eval_context of {profile.eval_context} "
                        f"needs at least {2 * profile.eval_context}",
                        hint="add rows (--all-rows uses every row of --data) or choose a target "
                             "with a smaller eval_context")
    ev.stage("evaluate", f"F16 + {len(models)} quant{'s' * (len(models) > 1)} on {len(rows)} "
                         f"held-out rows ({n_tokens:,} tokens)")
    files = {m.quant: str(m.path.resolve()) for m in models}  # absolute: QuantizedModels joins
    mix = {q: tensor_mix(Path(p), q) for q, p in files.items()}
    quantised = QuantizedModels(path=reference.path.parent, source_gguf=str(reference.path),
                                files=files, mix=mix,
                                fallbacks={q: m["fell_back"] for q, m in mix.items()})
    failure: GateFailure | None = None
    try:
        evaluate(GgufModel(path=reference.path.parent, file=reference.path.name,
                           architecture=reference.architecture),
                 quantised, profile, texts, out, overwrite=overwrite, qa_rows=rows,
                 system_prompt=system_prompt, answer_format=answer_format,
                 accept_gate_failure=accept_gate_failure,
                 on_progress=lambda q, i, n: ev.progress("evaluate", i, n, q))
    except GateFailure as exc:  # the report is written: finish the progress display first
        failure = exc
    ev.progress("evaluate", len(models) + 1, len(models) + 1)
    ev.stage_done("evaluate", f"{out}: eval.json, eval.md, eval.png")
    if failure is not None:
        raise failure
    return EvalReport(path=out)


def _check_comparable(reference: GgufFile, models: Sequence[GgufFile]) -> None:
    """KL divergence compares token by token: every quant must be a quant of ``reference``."""
    if reference.quant not in _REFERENCE_TYPES:
        raise ModelError(f"{reference.path}: the first file must be the unquantised reference "
                         f"(F16, BF16 or F32), not {reference.quant}",
                         hint="Pass the F16 GGUF first, then the quantised GGUFs.")
    if not models:
        raise ConfigError("no quantised GGUF to evaluate",
                          hint="Pass the F16 GGUF first, then one or more quantised GGUFs.")
    seen: dict[str, Path] = {}
    for m in models:
        if m.quant in _REFERENCE_TYPES:
            raise ModelError(f"{m.path}: is the unquantised {m.quant} model, not a quant",
                             hint="Pass the F16 GGUF once, first, and only quantised GGUFs "
                                  "after it.")
        if m.quant in seen:
            raise ConfigError(f"{seen[m.quant]} and {m.path} are both {m.quant}",
                              hint="Evaluate them in separate runs, each with its own --out.")
        seen[m.quant] = m.path
        if m.vocab_sha256 != reference.vocab_sha256 or m.architecture != reference.architecture:
            what = "vocabulary" if m.vocab_sha256 != reference.vocab_sha256 else "architecture"
            raise ModelError(f"{m.path.name} does not share {reference.path.name}'s {what}",
                             hint="Compare each quant with the F16 GGUF it was quantised from "
                                  "(KL divergence compares them token by token).")
