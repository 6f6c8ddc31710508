"""evaluate: every quant against the F16 model, in llama.cpp, on held-out data.

Per quant: fidelity against F16 (perplexity and its ratio, mean/p99 KL divergence, top-1
agreement, delta-p: ``edgetune.fidelity``; every quant, and every quant built without the
imatrix, runs in lockstep with a single F16 pass), task accuracy on the held-out questions
(``edgetune.accuracy``), prefill/decode speed as llama-bench measures it with the machine's
load (``edgetune.speed``), file size and the RAM a phone needs. Each quant is gated against the
target profile's thresholds (``edgetune.gates``); a failure stops the build after the report is
written, unless the failure is explicitly accepted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgetune.accuracy import paired_drop, task_accuracy
from edgetune.artifacts import EvalReport, GgufModel, QuantizedModels, atomic_dir, write_json_atomic
from edgetune.data import QARow
from edgetune.gates import GateFailure, gate_report
from edgetune.mix import MIX
from edgetune.profiles import QuantProfile
from edgetune.ram import ram_needed
from edgetune.quantise import tensor_mix
from edgetune.report import write_reports
from edgetune.speed import speed


# Prefix of the name under which a quant built without the imatrix is compared.
_PLAIN = "without-imatrix/"


def evaluate(f16: GgufModel, quants: QuantizedModels, profile: QuantProfile,
             eval_texts: Sequence[str], out: Path, *, qa_rows: Sequence[QARow] = (),
             system_prompt: str = "", answer_format: str = "reasoning",
             max_answer_tokens: int = 256, general_text: str | None = None,
             accept_gate_failure: bool = False,
             overwrite: bool = False,
             on_progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Measure F16 and each quant at the profile's contexts, gate the quants against its
    thresholds, and write ``out/eval.json`` with its readable views ``eval.md`` and ``eval.png``.

    Raises ``GateFailure`` (after writing the report) when a quant fails its gates and
    ``accept_gate_failure`` is false.
    """
    from edgetune.fidelity import compare_many

    models = {"F16": f16.gguf, **{q: quants.gguf(q) for q in quants.files}}
    # Every quant, and every quant built without the imatrix, against one F16 pass.
    plain = {q: quants.path / quants.without_imatrix[q]
             for q in quants.files if q in quants.without_imatrix}
    compared = {**{q: p for q, p in models.items() if q != "F16"},
                **{_PLAIN + q: p for q, p in plain.items()}}
    context_length, n_ctx = profile.context_length, profile.eval_context
    texts = fidelity_texts(f16.gguf, eval_texts, general_text, n_ctx)
    steps = len(models) + 1
    if on_progress:
        on_progress("fidelity", 0, steps)
    by_text: dict[str, dict] = {name: {} for name in texts}
    for name, tokens in texts.items():
        for group in fidelity_groups(f16.gguf.stat().st_size,
                                     {q: path.stat().st_size for q, path in compared.items()},
                                     _memory_bytes() // 2):
            by_text[name].update(compare_many(f16.gguf, {q: compared[q] for q in group}, tokens,
                                              n_ctx=n_ctx))
    vocab = vocab_size(f16.gguf)
    fidelity = {q: worse_of({name: by_text[name][q] for name in texts}, vocab) for q in compared}
    results: dict[str, dict] = {}
    accuracies: dict = {}  # quant -> Accuracy, for the drop paired question by question
    for i, (quant, path) in enumerate(models.items(), start=1):
        if on_progress:
            on_progress(quant, i, steps)
        metrics: dict = {"file": path.name, "size_bytes": path.stat().st_size}
        if quant != "F16":
            metrics.update(fidelity[quant])
            metrics["imatrix"] = quant in plain
            if metrics["imatrix"]:
                without = fidelity[_PLAIN + quant]
                metrics["without_imatrix"] = without
                if without["kld_mean"] > 0:
                    metrics["imatrix_kld_reduction"] = 1 - metrics["kld_mean"] / without["kld_mean"]
        metrics.update(speed(path))
        metrics["ram_needed_bytes"] = ram_needed(path, context_length)
        metrics["k_quant_fallbacks"] = quants.fallbacks.get(quant, 0)
        mix = quants.mix.get(quant) or tensor_mix(path, quant)
        metrics.update(matrices=mix["matrices"], bits_per_weight=mix["bits_per_weight"])
        if qa_rows:
            accuracies[quant] = task_accuracy(path, qa_rows, system_prompt=system_prompt,
                                              answer_format=answer_format,
                                              max_tokens=max_answer_tokens)
            metrics.update(accuracies[quant].as_dict())
        results[quant] = metrics
    _fill_reference(results)
    for quant, accuracy in accuracies.items():
        if quant != "F16":
            results[quant].update(paired_drop(accuracies["F16"], accuracy))
    report: dict = {"context_length": context_length, "eval_ctx": n_ctx,
                    "eval_tokens": len(texts[HELD_OUT]),
                    "fidelity_texts": {name: {"tokens": len(tokens), "source": TEXT_SOURCES[name]}
                                       for name, tokens in texts.items()},
                    "task_rows": len(qa_rows), "quants": results}
    verdicts = gate_report(results, profile)
    for quant, verdict in verdicts.items():
        results[quant]["gate"] = verdict.as_dict()
        results[quant]["gate_passed"] = verdict.passed
    if MIX in results:  # the measured mix ships only where it beats plain Q4_K_M
        results[MIX]["mix"] = {**judge(results), **quants.recipes.get(MIX, {})}
        verdicts = {q: v for q, v in verdicts.items() if q != MIX}  # it never stops a build
    report["target"] = profile.name
    report["gates_passed"] = all(v.passed for v in verdicts.values())
    report["accepted_gate_failure"] = bool(accept_gate_failure and not report["gates_passed"])
    with atomic_dir(out, overwrite=overwrite) as scratch:
        write_json_atomic(scratch / "eval.json", report)
        # The readable views, from the JSON as written; with a failed gate they show why.
        write_reports(scratch, json.loads((scratch / "eval.json").read_text()))
        artifact = EvalReport(path=scratch)
        artifact.save()
    if verdicts and not report["gates_passed"] and not accept_gate_failure:
        raise GateFailure(verdicts, profile.name)
    return dataclasses.replace(artifact, path=out)


HELD_OUT, GENERAL = "held_out", "general"
TEXT_SOURCES = {HELD_OUT: "the held-out rows, rendered as conversations the way the model reads "
                          "them at chat time (special tokens as tokens)",
                GENERAL: "general English shipped with edgetune: seven State of the Union "
                         "addresses, opening sentences (CC0 / public domain)"}
# The figures gated on; each is taken from whichever text is worse for it.
_WORSE = {"kld_mean": max, "kld_p99": max, "ppl_ratio": max, "top1": min}


def fidelity_texts(f16: Path, conversations: Sequence[str], general: str | None,
                   n_ctx: int) -> dict[str, list[int]]:
    """The two token streams fidelity is measured on: the held-out conversations (what this
    creator's followers ask) and a general-English text (what they might ask about anything).
    Neither is ever used for calibration. ``general`` None: the shipped text; "": none. A general
    text shorter than two chunks is left out rather than padded."""
    from edgetune.fidelity import chat_tokens, eval_tokens
    from edgetune.resources import general_english

    texts = {HELD_OUT: chat_tokens(f16, conversations)}
    general_tokens = eval_tokens(f16, general_english() if general is None else general) \
        if general != "" else []
    if len(general_tokens) >= 2 * n_ctx:
        texts[GENERAL] = general_tokens
    return texts


def worse_of(by_text: dict, vocab: int | None = None) -> dict:
    """One quant's fidelity for the table and the gates: each gated figure (``_WORSE``: mean and
    p99 KLD, PPL ratio, top-1) is the worse of the texts; the descriptive ones (perplexities,
    token counts, standard errors, Δp) are the held-out text's, so F16's and every quant's PPL are
    on the same text. ``texts`` keeps each text's figures; ``worse_text`` has the higher KLD.

    A text the F16 model cannot predict (its perplexity above a tenth of the ``vocab`` size: the
    demo's 2 M-parameter model on general English scores ~3,000 with 512 tokens) gives a PPL
    ratio that is noise (1.07 at a KLD of 0.003); it is kept in ``texts`` but not gated on, and
    ``ppl_ratio_not_gated`` says why. KLD and top-1 stay meaningful there and count."""
    figures = {name: f.as_dict() for name, f in by_text.items()}
    worst = max(figures, key=lambda name: figures[name]["kld_mean"])
    merged = dict(figures[HELD_OUT])
    for key, pick in _WORSE.items():
        merged[key] = pick(f[key] for f in figures.values())
    unpredictable = {name: f["ppl_base"] for name, f in figures.items()
                     if vocab and name != HELD_OUT and f["ppl_base"] > vocab / 10}
    if unpredictable:
        merged["ppl_ratio"] = max(f["ppl_ratio"] for name, f in figures.items()
                                  if name not in unpredictable)
        merged["ppl_ratio_not_gated"] = {
            name: f"F16 perplexity {ppl:,.0f} on this text, over a tenth of the {vocab:,}-token "
                  "vocabulary: the model does not predict it, its PPL ratio is noise"
            for name, ppl in unpredictable.items()}
    return {**merged, "worse_text": worst, "texts": figures}


def vocab_size(gguf_path: Path) -> int:
    import gguf

    return len(gguf.GGUFReader(str(gguf_path)).fields["tokenizer.ggml.tokens"].data)


def fidelity_groups(base_bytes: int, sizes: dict[str, int], budget_bytes: int) -> list[list[str]]:
    """Split the quants into groups that run in lockstep with one F16 pass each.

    Every model of a group is loaded at once, so a group's files plus the F16 file stay within
    ``budget_bytes`` where possible (a quant too big for any group still gets its own). One group,
    a single F16 pass, whenever everything fits: always for phone-sized models on a build
    machine.
    """
    groups: list[list[str]] = []
    room = 0
    for name, size in sizes.items():
        if not groups or size > room:
            groups.append([])
            room = budget_bytes - base_bytes
        groups[-1].append(name)
        room -= size
    return groups


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 * 2**30


def _fill_reference(results: dict[str, dict]) -> None:
    """F16 is the reference: its perplexity is every comparison's base, its ratios are 1."""
    f16 = results["F16"]
    compared = [m for q, m in results.items() if q != "F16"]
    if compared:
        f16.update(ppl=compared[0]["ppl_base"], ppl_ratio=1.0, kld_mean=0.0, top1=1.0,
                   tokens=compared[0]["tokens"], chunks=compared[0]["chunks"])


def judge(results: Mapping[str, dict], *, reference: str = "Q4_K_M",
          max_slowdown: float = 0.10) -> dict:
    """Does the mix earn its place in the bundle beside (or instead of) ``reference``? It must
    pass its gates, have a lower KLD and no lower top-1 on the gated (worse-of-two-texts)
    figures, and decode at least ``1 - max_slowdown`` as fast (not judged when either speed was
    measured on a busy machine)."""
    mix, ref = results.get(MIX), results.get(reference)
    if mix is None or ref is None:
        return {"ships": mix is not None and bool(mix.get("gate_passed")),
                "why": f"no {reference} built to compare with" if mix else f"no {MIX} built"}
    out = {"reference": reference,
           "size_change": mix["size_bytes"] / ref["size_bytes"] - 1,
           "kld_change": (mix["kld_mean"] / ref["kld_mean"] - 1) if ref["kld_mean"] else 0.0,
           "top1_change": mix["top1"] - ref["top1"]}
    speeds = (mix.get("decode_tps"), ref.get("decode_tps"))
    busy = mix.get("machine_busy") or ref.get("machine_busy")
    if all(speeds) and not busy:
        out["decode_ratio"] = speeds[0] / speeds[1]
    reasons = []
    if not mix.get("gate_passed"):
        reasons.append("it fails its gates")
    if out["kld_change"] >= 0:
        reasons.append(f"its KLD is not lower than {reference}'s")
    if out["top1_change"] < 0:
        reasons.append(f"its top-1 agreement is lower than {reference}'s")
    if out.get("decode_ratio", 1.0) < 1 - max_slowdown:
        reasons.append(f"it decodes {1 - out['decode_ratio']:.0%} slower than {reference}")
    out["ships"] = not reasons
    out["why"] = "; ".join(reasons) if reasons else (
        f"{-out['kld_change']:.0%} lower KLD than {reference} at "
        f"{out['size_change']:+.1%} size")
    return out
