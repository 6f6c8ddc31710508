"""One HTML page (``report.html``) about a whole bundle: who made it, how it was trained (the
reward chart, settings, warnings), how its quants did (the eval chart, the table, the gate
verdicts) and its files. Written by the bundle stage; self-contained and deterministic (no
script, no external URL, no clock: it shows only the manifest's ``created`` time).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from edgetune.report.charts import (
    CHART_ALT,
    CHART_FILE,
    REWARD_CHART_ALT,
    REWARD_CHART_FILE,
    reward_curves,
    training_config,
    training_warnings,
)
from edgetune.report.tables import (
    COLUMNS,
    human_size,
    measured_text,
    ordered_quants,
    table_row,
    target_verdict,
)

HTML_FILE = "report.html"


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
    out.append('<div class="wide"><table>\n<tr>' + "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
               + "</tr>")
    for quant, m in rows:
        cells = []
        for column, value in zip(COLUMNS, table_row(quant, m)):
            text = ('<span class="fail">FAIL</span>' if value == "**FAIL**" else
                    '<span class="pass">pass</span>' if column == "Gate" and value == "pass"
                    else e(value))
            cells.append(f"<td>{text}</td>" if column in ("Quant", "imatrix", "Gate")
                         else f'<td class="n">{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</table></div>", f"<p>{e(measured_text(report))}</p>", "<h3>Quality gates</h3>"]
    target = target_verdict(report)
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
