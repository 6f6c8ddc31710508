"""Charts for people, as PNGs: the quants' size vs KL divergence vs decode speed (``eval.png``)
and the reward per training step (``reward.png``), with the training-log readers behind them.

Deterministic: the PNGs carry no timestamp or version, so the same inputs give the same bytes.
matplotlib is imported inside the drawing functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.artifacts import atomic_file, write_text_atomic
from edgetune.report.tables import (
    MARKDOWN_FILE,
    MIX,
    REFERENCE,
    has_number,
    is_number,
    markdown_table,
    ordered_quants,
)

CHART_FILE = "eval.png"
CHART_ALT = "Size vs KL divergence vs decode speed"
REWARD_CHART_FILE = "reward.png"
REWARD_CHART_ALT = "Mean reward per training step"


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
              if q != REFERENCE and has_number(m, "size_bytes") and has_number(m, "kld_mean")
              and float(m["kld_mean"]) > 0]
    f16 = next((m for q, m in rows if q == REFERENCE and has_number(m, "size_bytes")), None)
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
        speeds = [float(m["decode_tps"]) for *_, m in points if has_number(m, "decode_tps")]
        lo, hi = (min(speeds), max(speeds)) if speeds else (0.0, 1.0)
        norm = Normalize(vmin=lo - 1 if lo == hi else lo, vmax=hi + 1 if lo == hi else hi)
        placed = {quant: (x, y) for quant, x, y, _m in points}
        if MIX in placed and "Q4_K_M" in placed:  # the measured mix against what it beats
            ax.annotate("", xy=placed[MIX], xytext=placed["Q4_K_M"], zorder=2,
                        arrowprops=dict(arrowstyle="->", color="0.3", linewidth=1,
                                        shrinkA=7, shrinkB=7))
        for quant, x, y, m in points:
            failed = _gate_failed(m)
            colour = (dict(c=[float(m["decode_tps"])], cmap="viridis", norm=norm)
                      if has_number(m, "decode_tps") else dict(color="0.6"))  # speed not measured
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


def _gate_failed(m: dict) -> bool | None:
    gate = m.get("gate")
    passed = gate.get("passed") if isinstance(gate, dict) else m.get("gate_passed")
    return None if not isinstance(passed, bool) else not passed


def _plain(text: Any) -> str:
    """Text for matplotlib: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


# --------------------------------------------------------------------------- training

def read_training_log(path: Path) -> tuple[dict, ...]:
    """The rows of a ``training_log.jsonl``; () when there is none.

    Lines that are not a JSON object (a line cut short by a killed run) are skipped: the log
    only feeds the report, which should not stop a build that has everything else.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return ()
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return tuple(rows)


@dataclass(frozen=True)
class RewardCurves:
    """Rewards per training step, as (step, value) sorted by step."""

    total: tuple[tuple[int, float], ...]  # TRL's "reward": the (weighted) sum of the functions
    functions: dict[str, tuple[tuple[int, float], ...]]  # rewards/<name>/mean, by name

    def __bool__(self) -> bool:
        return bool(self.total or self.functions)


def reward_curves(log_rows: Sequence[dict]) -> RewardCurves:
    """The reward curves of a training log (event rows skipped; a step logged twice, as after
    a resume, keeps its last value). An SFT log has none."""
    total: dict[int, float] = {}
    functions: dict[str, dict[int, float]] = {}
    for row in log_rows:
        step = row.get("step") if isinstance(row, dict) and "event" not in row else None
        if not is_number(step):
            continue
        for key, value in row.items():
            if not is_number(value):
                continue
            if key == "reward":
                total[int(step)] = float(value)
            elif key.startswith("rewards/") and key.endswith("/mean") and (name := key[8:-5]):
                functions.setdefault(name, {})[int(step)] = float(value)
    return RewardCurves(tuple(sorted(total.items())),
                        {n: tuple(sorted(functions[n].items())) for n in sorted(functions)})


def training_config(log_rows: Sequence[dict]) -> dict:
    """The trainer's effective settings: the log's step-0 ``config`` event ({} when absent)."""
    row = next((r for r in log_rows if isinstance(r, dict) and r.get("event") == "config"), {})
    return {k: v for k, v in row.items() if k not in ("step", "event")}


def training_warnings(log_rows: Sequence[dict]) -> list[dict]:
    """The log's ``warning`` events (``edgetune.training.health``), in log order."""
    return [r for r in log_rows if isinstance(r, dict) and r.get("event") == "warning"]


def reward_chart(log_rows: Sequence[dict], path: Path) -> Path:
    """Draw the mean reward per training step, total and per reward function, to ``path`` (PNG).

    Steps with a training-health warning get a dashed red line. A log without rewards (an SFT
    run, or no log at all) still gives a chart, labelled as empty, so a bundle always has the
    same files. Deterministic like ``quant_chart``: the same log gives the same bytes.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = reward_curves(log_rows)
    fig = Figure(figsize=(7.5, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(REWARD_CHART_ALT, fontsize=11)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean reward over the step's completions")
    ax.grid(True, alpha=0.3)
    if not curves:
        sft = training_config(log_rows).get("method") == "sft"
        why = ("no training log was recorded" if not log_rows else
               "no rewards in the training log" + (" (SFT logs a loss only)" if sft else ""))
        ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        longest = max(len(c) for c in (curves.total, *curves.functions.values()))
        marker = dict(marker="o", markersize=3) if longest <= 40 else {}
        palette = colormaps["tab10"]
        for i, (name, points) in enumerate(curves.functions.items()):
            ax.plot(*zip(*points), color=palette(i % 10), linewidth=1.2, label=_plain(name),
                    **marker)
        if curves.total:
            ax.plot(*zip(*curves.total), color="black", linewidth=2.2, zorder=3,
                    label="total", **marker)
        warned = sorted({int(w["step"]) for w in training_warnings(log_rows)
                         if is_number(w.get("step"))})
        for i, step in enumerate(warned):
            ax.axvline(step, color="red", linestyle="--", linewidth=1, alpha=0.7,
                       label="health warning" if i == 0 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})  # no metadata: same bytes
    return path


def write_reports(directory: Path, report: dict) -> tuple[Path, Path]:
    """Write ``eval.md`` and ``eval.png`` for ``report`` into ``directory``; return their paths."""
    directory = Path(directory)
    md, chart = directory / MARKDOWN_FILE, directory / CHART_FILE
    write_text_atomic(md, markdown_table(report))
    with atomic_file(chart) as tmp:
        quant_chart(report, tmp)
    return md, chart
