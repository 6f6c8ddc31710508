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
    failed = [(q, m["gate"].get("reasons") or []) for q, m in rows
              if isinstance(m.get("gate"), dict) and m["gate"].get("passed") is False]
    if failed:
        lines += ["", "Failed gates:", ""]
        lines += [f"- {_cell(q)}: {_cell(reason)}" for q, reasons in failed for reason in reasons
                  or ["(no reason recorded)"]]
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
    drop = m.get("task_accuracy_drop")
    return [quant, human_size(m.get("size_bytes")), human_size(m.get("ram_needed_bytes")),
            _fmt(m.get("ppl"), ".2f"), _fmt(m.get("ppl_ratio"), ".4f"), kld,
            "-" if ref else _fmt(m.get("kld_p99"), ".6f"), _fmt(m.get("top1"), ".1%"),
            "-" if ref else _fmt(m.get("delta_p_mean"), "+.3%"),
            _fmt(m.get("task_accuracy"), ".1%"),
            "-" if not is_number(drop) else f"{100 * float(drop):+.1f} pp",
            _fmt(m.get("prefill_tps"), ",.0f"), _fmt(m.get("decode_tps"), ",.0f"),
            _fmt(m.get("ttft_ms"), ",.1f"), _fmt(m.get("peak_rss_mb"), ",.0f"), imatrix, verdict]


def _summary(report: dict) -> str:
    text = measured_text(report)
    if (target := target_verdict(report)) is not None:
        name, passed, verdict = target
        verdict = verdict.replace("failed", "**failed**") if passed is False else verdict
        text += f" Target `{_cell(name)}`: {verdict}."
    return text


def measured_text(report: dict) -> str:
    """What was measured and how, in plain text (no markup)."""
    parts = []
    if is_number(report.get("eval_tokens")):
        held = f"{int(report['eval_tokens']):,} held-out tokens"
        if is_number(report.get("eval_ctx")):
            held += f" in chunks of {int(report['eval_ctx'])}"
        parts.append(held)
    if is_number(report.get("task_rows")) and report["task_rows"]:
        parts.append(f"{int(report['task_rows'])} task questions")
    if is_number(report.get("context_length")):
        parts.append(f"RAM at a {int(report['context_length']):,}-token context")
    text = ("Measured on " + ", ".join(parts) + ". ") if parts else ""
    return text + ("Speeds are from the machine that ran the evaluation, not a phone; KLD is "
                   "F16 -> quant in nats per token (± standard error); Δp is the mean change in "
                   "the probability of the right next token.")


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
