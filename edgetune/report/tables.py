"""The eval report as a GitHub Markdown table (``eval.md``), and the formatting the table, the
charts and the report page share: quants in report order, sizes, numbers and gate verdicts.
"""

from __future__ import annotations

import math
from typing import Any

MARKDOWN_FILE = "eval.md"
REFERENCE = "F16"

COLUMNS = ("Quant", "Size", "RAM needed", "PPL", "PPL ratio", "Mean KLD", "KLD p99", "Top-1",
           "Δp", "Task acc.", "Acc. drop", "Prefill tok/s", "Decode tok/s", "TTFT ms",
           "Peak RSS MiB", "imatrix", "Gate")


def ordered_quants(report: dict) -> list[tuple[str, dict]]:
    """F16 first, then the quants by file size, largest first (missing sizes last)."""
    quants = report.get("quants")
    items = [(str(q), m) for q, m in (quants.items() if isinstance(quants, dict) else ())
             if isinstance(m, dict)]

    def key(item: tuple[str, dict]) -> tuple[bool, float]:
        quant, m = item
        size = -float(m["size_bytes"]) if has_number(m, "size_bytes") else math.inf
        return quant != REFERENCE, size

    return sorted(items, key=key)


def markdown_table(report: dict) -> str:
    """The report as a GitHub Markdown table, a line on what was measured, and failed gates."""
    rows = ordered_quants(report)
    if not rows:
        return "No per-quant results were recorded.\n"
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c == "Quant" or c in ("imatrix", "Gate") else "---:"
                            for c in COLUMNS) + "|"]
    for quant, m in rows:
        lines.append("| " + " | ".join(_cell(v) for v in table_row(quant, m)) + " |")
    lines += ["", _summary(report)]
    if notes := size_notes(report):
        lines += ["", *[f"- {_cell(n)}" for n in notes]]
    failed = [(q, m["gate"].get("reasons") or []) for q, m in rows
              if isinstance(m.get("gate"), dict) and m["gate"].get("passed") is False]
    if failed:
        lines += ["", "Failed gates:", ""]
        lines += [f"- {_cell(q)}: {_cell(reason)}" for q, reasons in failed for reason in reasons
                  or ["(no reason recorded)"]]
    if notes := accuracy_notes(report):
        lines += ["", "Not judged:", "", *[f"- {_cell(n)}" for n in notes]]
    return "\n".join(lines) + "\n"


def table_row(quant: str, m: dict) -> list[str]:
    ref = quant == REFERENCE
    kld = _fmt(m.get("kld_mean"), ".6f")
    if kld != "-" and has_number(m, "kld_se") and not ref:
        kld += f" ± {float(m['kld_se']):.6f}"
    if m.get("imatrix") is True:
        imatrix = "yes" + (f" ({float(m['imatrix_kld_reduction']):.1%} lower KLD)"
                           if has_number(m, "imatrix_kld_reduction") else "")
    else:
        imatrix = "-"
    gate = m.get("gate")
    passed = gate.get("passed") if isinstance(gate, dict) else m.get("gate_passed")
    verdict = ("reference" if ref else "-" if not isinstance(passed, bool)
               else "pass" if passed else "**FAIL**")
    return [quant_label(quant, m), size_label(m), human_size(m.get("ram_needed_bytes")),
            _fmt(m.get("ppl"), ".2f"), _fmt(m.get("ppl_ratio"), ".4f"), kld,
            "-" if ref else _fmt(m.get("kld_p99"), ".6f"), _fmt(m.get("top1"), ".1%"),
            "-" if ref else _fmt(m.get("delta_p_mean"), "+.3%"),
            *accuracy_cells(m),
            _fmt(m.get("prefill_tps"), ",.0f"), decode_cell(m),
            _fmt(m.get("ttft_ms"), ",.1f"), _fmt(m.get("peak_rss_mb"), ",.0f"), imatrix, verdict]


def decode_cell(m: dict) -> str:
    """Decode tok/s, ``(busy)`` when measured beside other work (``edgetune.speed``), and
    ``not judged`` when that kept a decode gate from judging (the note below the table says
    why)."""
    cell = _fmt(m.get("decode_tps"), ",.0f")
    if cell != "-" and m.get("machine_busy") is True:
        cell += " (busy)"
    gate = m.get("gate")
    checks = gate.get("checks") if isinstance(gate, dict) else None
    if isinstance(checks, dict) and any(isinstance(checks.get(k), dict) and checks[k].get("busy")
                                        for k in ("decode_tps", "decode_ratio")):
        cell += ", not judged"
    return cell


def quant_label(quant: str, m: dict) -> str:
    """``Q4_K_M* 181/272 fell back``: a K-quant whose matrices llama.cpp stored in a legacy type
    (rows not a multiple of 256) is marked where its name is read."""
    fell, total = m.get("k_quant_fallbacks"), m.get("matrices")
    if is_number(fell) and fell > 0:
        return f"{quant}* {int(fell)}/{int(total)} fell back" if is_number(total) else f"{quant}*"
    return quant


def size_label(m: dict) -> str:
    """The file size with its real bits per weight (``96.6 MiB, 5.9 bpw``)."""
    size = human_size(m.get("size_bytes"))
    return f"{size}, {float(m['bits_per_weight']):.1f} bpw" if has_number(m, "bits_per_weight") \
        else size


# A quant less than this much smaller than the next larger one adds nothing worth shipping.
ADDS_NOTHING = 0.05


def size_notes(report: dict) -> list[str]:
    """Plain sentences for what the sizes mean: K-quants that fell back, and a quant that is
    hardly smaller than the next one up (on a narrow model "Q4_K_M" can be mostly q5_0)."""
    rows = [(q, m) for q, m in ordered_quants(report) if q != REFERENCE]
    notes = []
    for quant, m in rows:
        if has_number(m, "k_quant_fallbacks") and m["k_quant_fallbacks"] > 0:
            bpw = (f" ({float(m['bits_per_weight']):.1f} bits per weight)"
                   if has_number(m, "bits_per_weight") else "")
            notes.append(f"{quant}: {int(m['k_quant_fallbacks'])} of {int(m.get('matrices') or 0)} "
                         f"weight matrices fell back from {quant}'s K-quant types to legacy types "
                         f"(rows not a multiple of 256){bpw}.")
    notes += mix_notes(report)
    rows = [(q, m) for q, m in rows if q != MIX]  # the mix is Q4_K_M's size by design
    for (bigger, b), (smaller, m) in zip(rows, rows[1:]):  # largest first
        if has_number(b, "size_bytes") and has_number(m, "size_bytes") and b["size_bytes"] > 0:
            saved = 1 - m["size_bytes"] / b["size_bytes"]
            if saved < ADDS_NOTHING:
                notes.append(f"{smaller} adds nothing: it is only {saved:.1%} smaller than "
                             f"{bigger}.")
    return notes


MIX = "Q4_K_X"  # edgetune.mix.MIX (report stays free of the quantiser's imports)


def mix_notes(report: dict) -> list[str]:
    """One sentence on the measured mix beside the quant it was measured against."""
    m = (report.get("quants") or {}).get(MIX)
    verdict = (m or {}).get("mix") or {}
    if not m or "kld_change" not in verdict:
        return []
    sentence = (f"{MIX} (a type per tensor chosen for this model): {verdict['kld_change']:+.0%} "
                f"mean KLD against {verdict['reference']} at {verdict['size_change']:+.1%} size, "
                f"top-1 {100 * verdict['top1_change']:+.1f} points")
    if is_number(verdict.get("decode_ratio")):
        sentence += f", decode {verdict['decode_ratio']:.2f}x"
    shipped = "ships" if verdict.get("ships") else f"not shipped: {verdict.get('why', '')}"
    return [f"{sentence}; {shipped}."]


def _summary(report: dict) -> str:
    text = measured_text(report)
    if (target := target_verdict(report)) is not None:
        name, passed, verdict = target
        verdict = verdict.replace("failed", "**failed**") if passed is False else verdict
        text += f" Target `{_cell(name)}`: {verdict}."
        if accuracy_notes(report):  # a pass that could not judge everything says so
            text += " Some checks could not judge: see Not judged below."
    return text


def measured_text(report: dict) -> str:
    """What was measured and how, in plain text (no markup)."""
    parts = []
    if is_number(report.get("eval_tokens")):
        held = f"{int(report['eval_tokens']):,} held-out tokens"
        general = (report.get("fidelity_texts") or {}).get("general") or {}
        if is_number(general.get("tokens")):
            held += f" and {int(general['tokens']):,} tokens of general English"
        if is_number(report.get("eval_ctx")):
            held += f" in chunks of {int(report['eval_ctx'])}"
        parts.append(held)
    if is_number(report.get("task_rows")) and report["task_rows"]:
        parts.append(f"{int(report['task_rows'])} task questions")
    if is_number(report.get("context_length")):
        parts.append(f"RAM at a {int(report['context_length']):,}-token context")
    text = ("Measured on " + ", ".join(parts) + ". ") if parts else ""
    two = "general" in (report.get("fidelity_texts") or {})
    return text + ("Speeds are from the machine that ran the evaluation, not a phone; KLD is "
                   "F16 -> quant in nats per token (± standard error); Δp is the mean change in "
                   "the probability of the right next token."
                   + (" Mean KLD, KLD p99, top-1 and PPL ratio are the worse of the two texts; "
                      "PPL, ± and Δp are the held-out text's." if two else ""))


def target_verdict(report: dict) -> tuple[str, bool | None, str] | None:
    """(target, gates passed, verdict in plain words), or None when no target was gated."""
    if not report.get("target"):
        return None
    passed = report.get("gates_passed")
    verdict = {True: "every quant passes its gates", False: "gates failed"}.get(
        passed, "gates not recorded")
    if report.get("accepted_gate_failure"):
        verdict += " (shipped anyway: accepted by the creator)"
    return str(report["target"]), passed if isinstance(passed, bool) else None, verdict


def accuracy_cells(m: dict) -> list[str]:
    """Task accuracy with its question count (``47.2% (17/36)``), and the drop from F16 with its
    paired 95% interval (``+2.8 pp [-1.2, +6.8]``), or ``not judged`` beside it."""
    acc = _fmt(m.get("task_accuracy"), ".1%")
    if acc != "-" and has_number(m, "task_correct") and has_number(m, "task_total"):
        acc += f" ({int(m['task_correct'])}/{int(m['task_total'])})"
    drop = m.get("task_accuracy_drop")
    if not is_number(drop):
        return [acc, "-"]
    cell = f"{100 * float(drop):+.1f} pp"
    ci = m.get("task_drop_ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(x) for x in ci):
        cell += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
    if _accuracy_check(m).get("why") == "cannot judge":
        cell += ", not judged"
    return [acc, cell]


def accuracy_notes(report: dict) -> list[str]:
    """Why a check could not judge (``cannot judge accuracy on this data: ...``), once per
    distinct reason with the quants it concerns (F16 scoring 0 concerns every quant)."""
    by_detail: dict[str, list[str]] = {}
    for quant, m in ordered_quants(report):
        gate = m.get("gate") if isinstance(m.get("gate"), dict) else {}
        for check in (gate.get("checks") or {}).values():
            if isinstance(check, dict) and check.get("why") == "cannot judge":
                by_detail.setdefault(str(check.get("detail") or "cannot judge"), []).append(quant)
    return [f"{', '.join(quants)}: {detail}" for detail, quants in by_detail.items()]


def _accuracy_check(m: dict) -> dict:
    gate = m.get("gate")
    checks = gate.get("checks") if isinstance(gate, dict) else None
    check = checks.get("accuracy_drop") if isinstance(checks, dict) else None
    return check if isinstance(check, dict) else {}


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def has_number(m: dict, key: str) -> bool:
    return is_number(m.get(key))


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if is_number(value) else "-"


def human_size(n: Any) -> str:
    """``884.7 KiB``: sizes in the card, the report page and the CLI; ``-`` for no number."""
    if not is_number(n):
        return "-"
    i = next((k for k in (3, 2, 1) if abs(n) >= 1024 ** k), 0)
    return f"{n:.0f} B" if i == 0 else f"{n / 1024 ** i:.1f} {('', 'KiB', 'MiB', 'GiB')[i]}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
