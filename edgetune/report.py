"""Reports for people: eval.json as a Markdown table (``eval.md``) and a chart (``eval.png``);
the training log as a reward curve (``reward.png``); and one HTML page (``report.html``) about
a whole bundle that shows both charts, the table, the gate verdicts and the files.

The eval table and chart are rendered from the eval.json dict that ``edgetune.evaluate``
writes and go next to it, in the build's eval folder, in ``edgetune eval``'s output and in the
bundle; the reward curve and the page are written by the bundle stage. Everything is
deterministic: the same inputs give the same bytes (the PNGs carry no timestamp or version, the
page shows only the manifest's ``created`` time), so rebuilt bundles are identical.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKDOWN_FILE = "eval.md"
CHART_FILE = "eval.png"
CHART_ALT = "Size vs KL divergence vs decode speed"
REFERENCE = "F16"
REWARD_CHART_FILE = "reward.png"
REWARD_CHART_ALT = "Mean reward per training step"
HTML_FILE = "report.html"

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
    return [quant, human_size(m.get("size_bytes")), human_size(m.get("ram_needed_bytes")),
            _fmt(m.get("ppl"), ".2f"), _fmt(m.get("ppl_ratio"), ".4f"), kld,
            "-" if ref else _fmt(m.get("kld_p99"), ".6f"), _fmt(m.get("top1"), ".1%"),
            "-" if ref else _fmt(m.get("delta_p_mean"), "+.3%"),
            _fmt(m.get("task_accuracy"), ".1%"),
            "-" if not _is_num(drop) else f"{100 * float(drop):+.1f} pp",
            _fmt(m.get("prefill_tps"), ",.0f"), _fmt(m.get("decode_tps"), ",.0f"),
            _fmt(m.get("ttft_ms"), ",.1f"), _fmt(m.get("peak_rss_mb"), ",.0f"), imatrix, verdict]


def _summary(report: dict) -> str:
    text = _measured(report)
    if (target := _target_verdict(report)) is not None:
        name, passed, verdict = target
        verdict = verdict.replace("failed", "**failed**") if passed is False else verdict
        text += f" Target `{_cell(name)}`: {verdict}."
    return text


def _measured(report: dict) -> str:
    """What was measured and how, in plain text (no markup)."""
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
    return text + ("Speeds are from the machine that ran the evaluation, not a phone; KLD is "
                   "F16 -> quant in nats per token (± standard error); Δp is the mean change in "
                   "the probability of the right next token.")


def _target_verdict(report: dict) -> tuple[str, bool | None, str] | None:
    """(target, gates passed, verdict in plain words), or None when no target was gated."""
    if not report.get("target"):
        return None
    passed = report.get("gates_passed")
    verdict = {True: "every quant passes its gates", False: "gates failed"}.get(
        passed, "gates not recorded")
    if report.get("accepted_gate_failure"):
        verdict += " (shipped anyway: accepted by the creator)"
    return str(report["target"]), passed if isinstance(passed, bool) else None, verdict


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
        if not _is_num(step):
            continue
        for key, value in row.items():
            if not _is_num(value):
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
                         if _is_num(w.get("step"))})
        for i, step in enumerate(warned):
            ax.axvline(step, color="red", linestyle="--", linewidth=1, alpha=0.7,
                       label="health warning" if i == 0 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})  # no metadata: same bytes
    return path


# --------------------------------------------------------------------------- HTML page

_CSS = ("body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;"
        "color:#222}h1 small{color:#666;font-weight:normal}table{border-collapse:collapse;"
        "margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;"
        "vertical-align:top}td.n{text-align:right;white-space:nowrap}th{background:#f3f3f3}"
        ".fail{color:#b00;font-weight:bold}.pass{color:#070}img{max-width:100%;height:auto}"
        ".wide{overflow-x:auto}code{background:#f3f3f3;padding:0 .2em}.note{color:#555}")


def html_report(manifest: dict, eval_report: dict, log_rows: Sequence[dict] = (),
                files: Sequence[tuple[str, int | None]] = ()) -> str:
    """One self-contained HTML page about a bundle: who made it, how it was trained (settings,
    reward curve ``reward.png``, warnings), how its quants did (chart ``eval.png``, the
    ``eval.md`` table, gate verdicts) and its files as (path, size in bytes; None: not known).

    ``manifest`` is the bundle's ``edgetune.json``; every text from it is escaped. Inline CSS,
    no script, no external URL, no clock: the same inputs give the same page.
    """
    e = escape_html
    creator = manifest.get("creator") if isinstance(manifest.get("creator"), dict) else {}
    base = manifest.get("base_model") if isinstance(manifest.get("base_model"), dict) else {}
    training = manifest.get("training") if isinstance(manifest.get("training"), dict) else {}
    name, version = manifest.get("name", "model"), manifest.get("version", "")
    out = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           # No script may run, whatever text ended up in the page.
           '<meta http-equiv="Content-Security-Policy" content="script-src \'none\'; '
           'object-src \'none\'; base-uri \'none\'; form-action \'none\'">\n'
           '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
           f"<title>{e(name)} {e(version)}: edgetune report</title>\n<style>{_CSS}</style>\n"
           f"</head>\n<body>\n<h1>{e(name)} <small>{e(version)}</small></h1>\n"
           f"<p>By {e(creator.get('name', '?'))}, fine-tuned from <code>{e(base.get('name', '?'))}"
           f"</code> (licence {e(base.get('license', '?'))}). Bundle "
           f"<code>{e(manifest.get('bundle_id', '?'))}</code>, built "
           f"{e(manifest.get('created', '?'))}.</p>"]
    out += _html_training(training, log_rows)
    out += _html_evaluation(eval_report)
    out.append("<h2>Files in the bundle</h2>")
    if files:
        out.append("<table>\n<tr><th>File</th><th>Size</th><th>Bytes</th></tr>")
        out += [f'<tr><td><code>{e(path)}</code></td><td class="n">{human_size(size)}</td>'
                f'<td class="n">{"-" if size is None else f"{size:,}"}</td></tr>'
                for path, size in files]
        out.append("</table>")
    unsized = ", ".join(f"<code>{e(path)}</code>" for path, size in files if size is None)
    out.append('<p class="note">' + (f"No size for {unsized}: written after this list. "
                                     if unsized else "")
               + "Every file of the bundle is covered by the signature in <code>model.sig</code>: "
               "check it with <code>edgetune verify BUNDLE --key creator.pub</code>. Take figures "
               "from <code>eval.json</code> and <code>edgetune.json</code>; this page and the "
               "charts only show them.</p>")
    return "\n".join(out) + "\n</body>\n</html>\n"


def _html_training(training: dict, log_rows: Sequence[dict]) -> list[str]:
    e = escape_html
    facts = [("Method", training.get("method")), ("Backend", training.get("backend")),
             ("Steps", training.get("steps")), ("Training rows", training.get("dataset_rows")),
             ("Reward functions", ", ".join(map(str, training.get("rewards") or [])) or None)]
    warm = training.get("warm_start")
    if isinstance(warm, dict):
        facts.append(("Warm start", f"{warm.get('method', '?')}, {warm.get('steps', '?')} steps "
                                    f"on {warm.get('examples', '?')} examples"))
    out = ["<h2>Training</h2>", _kv_table(facts)]
    settings = training_config(log_rows) or training.get("effective_config") or {}
    if isinstance(settings, dict) and settings:
        out += ["<h3>Effective settings</h3>", _kv_table(list(settings.items()))]
    out += ["<h3>Reward</h3>",
            f'<img src="{REWARD_CHART_FILE}" alt="{e(REWARD_CHART_ALT)}" width="750" height="480">']
    curves = reward_curves(log_rows)
    if curves:
        rows = [("total", curves.total)] if curves.total else []
        out.append("<table>\n<tr><th>Reward</th><th>First step</th><th>Last step</th>"
                   "<th>Best</th></tr>")
        for label, points in [*rows, *curves.functions.items()]:
            (s0, v0), (s1, v1) = points[0], points[-1]
            sb, vb = max(points, key=lambda p: (p[1], -p[0]))
            out.append(f"<tr><td>{e(label)}</td>" + "".join(
                f'<td class="n">{v:.3f} (step {s})</td>' for s, v in ((s0, v0), (s1, v1), (sb, vb)))
                + "</tr>")
        out.append("</table>")
    elif not log_rows:
        out.append('<p class="note">No training log was recorded.</p>')
    else:
        out.append('<p class="note">No rewards in the training log.</p>')
    warnings = training_warnings(log_rows)
    out.append("<h3>Warnings</h3>")
    if warnings:
        out.append("<ul>" + "".join(
            f"<li>Step {e(w.get('step', '?'))} (<code>{e(w.get('code', '?'))}</code>): "
            f"{e(w.get('message', ''))}</li>" for w in warnings) + "</ul>")
    else:
        out.append("<p>None" + (" (no training log)" if not log_rows else "") + ".</p>")
    return out


def _html_evaluation(report: dict) -> list[str]:
    e = escape_html
    out = ["<h2>Evaluation</h2>",
           f'<img src="{CHART_FILE}" alt="{e(CHART_ALT)}" width="750" height="480">']
    rows = ordered_quants(report)
    if not rows:
        return out + ["<p>No per-quant results were recorded.</p>"]
    out.append('<div class="wide"><table>\n<tr>' + "".join(f"<th>{e(c)}</th>" for c in _COLUMNS)
               + "</tr>")
    for quant, m in rows:
        cells = []
        for column, value in zip(_COLUMNS, _row(quant, m)):
            text = ('<span class="fail">FAIL</span>' if value == "**FAIL**" else
                    '<span class="pass">pass</span>' if column == "Gate" and value == "pass"
                    else e(value))
            cells.append(f"<td>{text}</td>" if column in ("Quant", "imatrix", "Gate")
                         else f'<td class="n">{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</table></div>", f"<p>{e(_measured(report))}</p>", "<h3>Quality gates</h3>"]
    target = _target_verdict(report)
    if target is None:
        out.append("<p>No target's gates were checked.</p>")
    else:
        name, passed, verdict = target
        css = {True: "pass", False: "fail"}.get(passed, "note")
        out.append(f'<p>Target <code>{e(name)}</code>: <span class="{css}">{e(verdict)}</span>'
                   ".</p>")
    gated = [(q, m["gate"]) for q, m in rows if isinstance(m.get("gate"), dict)]
    if gated:
        out.append("<table>\n<tr><th>Quant</th><th>Verdict</th><th>Checks</th><th>Why it failed"
                   "</th></tr>")
        for quant, gate in gated:
            checks = gate.get("checks") if isinstance(gate.get("checks"), dict) else {}
            ran = [c for c in checks.values() if isinstance(c, dict) and not c.get("skipped")]
            skipped = sorted(k for k, c in checks.items()
                             if isinstance(c, dict) and c.get("skipped"))
            ok = sum(1 for c in ran if c.get("passed") is True)
            summary = f"{ok} of {len(ran)} passed" + (f"; skipped: {', '.join(skipped)}"
                                                      if skipped else "")
            verdict = ('<span class="pass">pass</span>' if gate.get("passed") is True else
                       '<span class="fail">FAIL</span>' if gate.get("passed") is False else "-")
            reasons = "<br>".join(e(r) for r in gate.get("reasons") or []) or "-"
            out.append(f"<tr><td>{e(quant)}</td><td>{verdict}</td><td>{e(summary)}</td>"
                       f"<td>{reasons}</td></tr>")
        out.append("</table>")
    return out


def _kv_table(items: Sequence[tuple[Any, Any]]) -> str:
    return "<table>\n" + "\n".join(
        f"<tr><th>{escape_html(k)}</th><td>{'-' if v is None else escape_html(_json_text(v))}</td></tr>"
        for k, v in items) + "\n</table>"


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def escape_html(value: Any) -> str:
    return html.escape(str(value), quote=True)


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


def human_size(n: Any) -> str:
    """``884.7 KiB``: sizes in the card, the report page and the CLI; ``-`` for no number."""
    if not _is_num(n):
        return "-"
    i = next((k for k in (3, 2, 1) if abs(n) >= 1024 ** k), 0)
    return f"{n:.0f} B" if i == 0 else f"{n / 1024 ** i:.1f} {('', 'KiB', 'MiB', 'GiB')[i]}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
