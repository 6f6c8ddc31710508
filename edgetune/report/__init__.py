"""Reports for people: eval.json as a Markdown table (``eval.md``) and a chart (``eval.png``);
the training log as a reward curve (``reward.png``); and one HTML page (``report.html``) about
a whole bundle that shows both charts, the table, the gate verdicts and the files.

The eval table and chart are rendered from the eval.json dict that ``edgetune.evaluate``
writes and go next to it, in the build's eval folder, in ``edgetune eval``'s output and in the
bundle; the reward curve and the page are written by the bundle stage. Everything is
deterministic: the same inputs give the same bytes (the PNGs carry no timestamp or version, the
page shows only the manifest's ``created`` time), so rebuilt bundles are identical.

``tables`` renders the table and the shared formatting, ``charts`` the PNGs (and
``write_reports``), ``page`` the HTML page.
"""

from edgetune.report.charts import (
    CHART_ALT,
    CHART_FILE,
    REWARD_CHART_ALT,
    REWARD_CHART_FILE,
    RewardCurves,
    quant_chart,
    read_training_log,
    reward_chart,
    reward_curves,
    training_config,
    training_warnings,
    write_reports,
)
from edgetune.report.page import HTML_FILE, escape_html, html_report
from edgetune.report.tables import (
    MARKDOWN_FILE,
    REFERENCE,
    human_size,
    markdown_table,
    ordered_quants,
)

__all__ = [
    "CHART_ALT", "CHART_FILE", "REWARD_CHART_ALT", "REWARD_CHART_FILE", "RewardCurves",
    "quant_chart", "read_training_log", "reward_chart", "reward_curves", "training_config",
    "training_warnings", "write_reports", "HTML_FILE", "escape_html", "html_report",
    "MARKDOWN_FILE", "REFERENCE", "human_size", "markdown_table", "ordered_quants",
]
