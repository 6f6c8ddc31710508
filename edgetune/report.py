"""Eval reports for people: eval.json as a Markdown table (``eval.md``) and a chart (``eval.png``).

Both are rendered from the eval.json dict that ``edgetune.evaluate`` writes and go next to it,
in the build's eval folder, in ``edgetune eval``'s output and in the bundle. The chart is
deterministic: the same report gives the same PNG bytes, so rebuilt bundles are identical.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

MARKDOWN_FILE = "eval.md"
CHART_FILE = "eval.png"
CHART_ALT = "Size vs KL divergence vs decode speed"
REFERENCE = "F16"

_COLUMNS = ("Quant", "Size", "RAM needed", "PPL", "PPL ratio", "Mean KLD", "KLD p99", "Top-1",
            "Δp", "Task acc.", "Acc. drop", "Prefill tok/s", "Decode tok/s", "TTFT ms",
            "Peak RSS MiB", "imatrix", "Gate")


def ordered_quants(report: dict) -> list[tuple[str, dict]]:
    """F16 first, then the quants by file size, largest first (missing sizes last)."""
    quants = report.get("quants")
    items = [(str(q), m) for q, m in (quants.items() if isinstance(quants, dict) else ())
             if isinstance(m, dict)]

    def key(item: tuple[str, dict]) -> tuple[bool, float]:
        quant, m = item
        return quant != REFERENCE, -float(m["size_bytes"]) if _has(m, "size_bytes") else math.inf

    return sorted(items, key=key)


def markdown_table(report: dict) -> str:
    """The report as a GitHub Markdown table, a line on what was measured, and failed gates."""
    rows = ordered_quants(report)
    if not rows:
        return "No per-quant results were recorded.\n"
    lines = ["| " + " | ".join(_COLUMNS) + " |",
             "|" + "|".join("---" if c == "Quant" or c in ("imatrix", "Gate") else "---:"
                            for c in _COLUMNS) + "|"]
    for quant, m in rows:
        lines.append("| " + " | ".join(_cell(v) for v in _row(quant, m)) + " |")
    lines += ["", _summary(report)]
    failed = [(q, m["gate"].get("reasons") or []) for q, m in rows
              if isinstance(m.get("gate"), dict) and m["gate"].get("passed") is False]
    if failed:
        lines += ["", "Failed gates:", ""]
        lines += [f"- {_cell(q)}: {_cell(reason)}" for q, reasons in failed for reason in reasons
                  or ["(no reason recorded)"]]
    return "\n".join(lines) + "\n"


def _row(quant: str, m: dict) -> list[str]:
    ref = quant == REFERENCE
    kld = _fmt(m.get("kld_mean"), ".6f")
    if kld != "-" and _has(m, "kld_se") and not ref:
        kld += f" ± {float(m['kld_se']):.6f}"
    if m.get("imatrix") is True:
        imatrix = "yes" + (f" ({float(m['imatrix_kld_reduction']):.1%} lower KLD)"
                           if _has(m, "imatrix_kld_reduction") else "")
    else:
        imatrix = "-"
    gate = m.get("gate")
    passed = gate.get("passed") if isinstance(gate, dict) else m.get("gate_passed")
    verdict = ("reference" if ref else "-" if not isinstance(passed, bool)
               else "pass" if passed else "**FAIL**")
    drop = m.get("task_accuracy_drop")
    return [quant, _size(m.get("size_bytes")), _size(m.get("ram_needed_bytes")),
            _fmt(m.get("ppl"), ".2f"), _fmt(m.get("ppl_ratio"), ".4f"), kld,
            "-" if ref else _fmt(m.get("kld_p99"), ".6f"), _fmt(m.get("top1"), ".1%"),
            "-" if ref else _fmt(m.get("delta_p_mean"), "+.3%"),
            _fmt(m.get("task_accuracy"), ".1%"),
            "-" if not _is_num(drop) else f"{100 * float(drop):+.1f} pp",
            _fmt(m.get("prefill_tps"), ",.0f"), _fmt(m.get("decode_tps"), ",.0f"),
            _fmt(m.get("ttft_ms"), ",.1f"), _fmt(m.get("peak_rss_mb"), ",.0f"), imatrix, verdict]


def _summary(report: dict) -> str:
    parts = []
    if _is_num(report.get("eval_tokens")):
        held = f"{int(report['eval_tokens']):,} held-out tokens"
        if _is_num(report.get("eval_ctx")):
            held += f" in chunks of {int(report['eval_ctx'])}"
        parts.append(held)
    if _is_num(report.get("task_rows")) and report["task_rows"]:
        parts.append(f"{int(report['task_rows'])} task questions")
    if _is_num(report.get("context_length")):
        parts.append(f"RAM at a {int(report['context_length']):,}-token context")
    text = ("Measured on " + ", ".join(parts) + ". ") if parts else ""
    text += ("Speeds are from the machine that ran the evaluation, not a phone; KLD is "
             "F16 -> quant in nats per token (± standard error); Δp is the mean change in the "
             "probability of the right next token.")
    if report.get("target"):
        verdict = {True: "every quant passes its gates", False: "gates **failed**"}.get(
            report.get("gates_passed"), "gates not recorded")
        if report.get("accepted_gate_failure"):
            verdict += " (shipped anyway: accepted by the creator)"
        text += f" Target `{_cell(report['target'])}`: {verdict}."
    return text


def quant_chart(report: dict, path: Path) -> Path:
    """Draw size (x) vs mean KLD (y, log) with decode tok/s as colour to ``path`` (PNG).

    F16 is the reference (KLD 0, which a log axis cannot show): a dashed vertical line at its
    size. Quants that failed their gates are drawn as red-edged crosses. The PNG carries no
    timestamp or version, so the same report always gives the same bytes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    mib = 2 ** 20
    fig = Figure(figsize=(7.5, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    title = CHART_ALT + (f" (target {_plain(report['target'])})" if report.get("target") else "")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence vs F16 (nats/token, log)")
    ax.grid(True, which="major", alpha=0.3)
    rows = ordered_quants(report)
    points = [(q, float(m["size_bytes"]) / mib, float(m["kld_mean"]), m) for q, m in rows
              if q != REFERENCE and _has(m, "size_bytes") and _has(m, "kld_mean")
              and float(m["kld_mean"]) > 0]
    f16 = next((m for q, m in rows if q == REFERENCE and _has(m, "size_bytes")), None)
    if f16 is not None:
        x = float(f16["size_bytes"]) / mib
        ax.axvline(x, color="0.35", linestyle="--", linewidth=1)
        ax.annotate("F16 reference (KLD 0)", (x, 0.02), xycoords=("data", "axes fraction"),
                    xytext=(-4, 0), textcoords="offset points", rotation=90, ha="right",
                    va="bottom", fontsize=8, color="0.25")
    if not points:
        ax.text(0.5, 0.5, "no quant with a measured KL divergence", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
        ax.set_yticks([])
    else:
        ax.set_yscale("log")
        speeds = [float(m["decode_tps"]) for *_, m in points if _has(m, "decode_tps")]
        lo, hi = (min(speeds), max(speeds)) if speeds else (0.0, 1.0)
        norm = Normalize(vmin=lo - 1 if lo == hi else lo, vmax=hi + 1 if lo == hi else hi)
        for quant, x, y, m in points:
            failed = _gate_failed(m)
            colour = (dict(c=[float(m["decode_tps"])], cmap="viridis", norm=norm)
                      if _has(m, "decode_tps") else dict(color="0.6"))  # speed not measured
            ax.scatter([x], [y], s=130 if failed else 110, marker="X" if failed else "o",
                       zorder=3, edgecolors="red" if failed else "black",
                       linewidths=1.6 if failed else 0.6, **colour)
            ax.annotate(_plain(quant), (x, y), xytext=(7, 5), textcoords="offset points",
                        fontsize=9, color="red" if failed else "black")
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax)
        bar.set_label("decode tok/s (evaluation machine)")
        ys = [y for _, _, y, _ in points]
        ax.set_ylim(min(ys) / 3, max(ys) * 3)
        if any(_gate_failed(m) is not None for *_, m in points):
            ax.legend(handles=[
                Line2D([], [], marker="o", linestyle="", color="0.7", markeredgecolor="black",
                       label="passed gates"),
                Line2D([], [], marker="X", linestyle="", color="0.7", markeredgecolor="red",
                       markeredgewidth=1.6, label="failed gates")], loc="best", fontsize=8)
    xs = [x for _, x, _, _ in points] + ([float(f16["size_bytes"]) / mib] if f16 else [])
    if xs:
        ax.set_xlim(0, max(xs) * 1.12)
    fig.tight_layout()
    path = Path(path)
    # No Software/creation metadata: the same report must give the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def write_reports(directory: Path, report: dict) -> tuple[Path, Path]:
    """Write ``eval.md`` and ``eval.png`` for ``report`` into ``directory``; return their paths."""
    directory = Path(directory)
    md = directory / MARKDOWN_FILE
    _write_text_atomic(md, markdown_table(report))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{CHART_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        quant_chart(report, Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / CHART_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return md, directory / CHART_FILE


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _gate_failed(m: dict) -> bool | None:
    gate = m.get("gate")
    passed = gate.get("passed") if isinstance(gate, dict) else m.get("gate_passed")
    return None if not isinstance(passed, bool) else not passed


def _is_num(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _has(m: dict, key: str) -> bool:
    return _is_num(m.get(key))


def _plain(text: Any) -> str:
    """Text for matplotlib: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _is_num(value) else "-"


def _size(n: Any) -> str:
    if not _is_num(n):
        return "-"
    i = next((k for k in (3, 2, 1) if abs(n) >= 1024 ** k), 0)
    return f"{n:.0f} B" if i == 0 else f"{n / 1024 ** i:.1f} {('', 'KiB', 'MiB', 'GiB')[i]}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
