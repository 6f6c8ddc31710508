"""Rich rendering of pipeline events and results. Only the CLI imports this module.

A terminal gets a live stage view and colour. A pipe or a CI log gets plain lines that are
never cut or wrapped at 80 columns (tables as wide as their content), and NO_COLOR (any value)
turns off every escape code, the live view's included. Consoles are made per command, when
the command runs, so they see the streams and environment it runs with.

Everything printed is safe to show whatever it holds (names, paths and fields come from files
others made): a console escapes control and bidi characters in every piece of text it writes
(``safe_text.printable``), and reads no rich markup unless a call asks for it (``markup=True``
or a ``Text``), so a name holding ``[bold]`` prints as written. Style with
``Text.assemble(("Published", "bold green"), f" {repo}")``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import timedelta

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgetune.cli.base import no_color
from edgetune.safe_text import printable

_FEW = 5  # CountBar: more calls than this get a bar


class SafeConsole(Console):
    """A rich Console that escapes control and bidi characters in the text it writes.

    Done where rendered segments become output (``_render_buffer``, rich's one path to the
    stream for print, tables, progress and live views), because only there is every piece of
    text seen, whatever renderable it came in; the cursor moves of a live view are control
    segments and pass unchanged. Overrides a private method: tests/test_redteam.py checks the
    escaping, so a rich upgrade that renames it fails there."""

    def _render_buffer(self, buffer):
        return super()._render_buffer(
            segment if segment.control else segment._replace(text=printable(segment.text))
            for segment in buffer)


def make_console(*, stderr: bool, **options) -> SafeConsole:
    """stderr carries what a person reads (progress, tables, notes); stdout results (JSON).
    Markup is off unless a call turns it on (see the module's docstring)."""
    options.setdefault("markup", False)
    console = SafeConsole(stderr=stderr, color_system=None if no_color() else "auto", **options)
    if not is_live(console):
        console.soft_wrap = True  # plain lines: never broken at (a default) 80 columns
    return console


def stderr_console(**options) -> SafeConsole:
    return make_console(stderr=True, **options)


def stdout_console(**options) -> SafeConsole:
    return make_console(stderr=False, **options)


def stdout_for_results():
    """Send whatever libraries print while a stage runs (Unsloth prints its banner and notices
    with print()) to stderr, so stdout carries only our results and `--json` stays parseable."""
    return contextlib.redirect_stdout(sys.stderr)


def is_live(console: Console) -> bool:
    """Whether a live (redrawn) view suits this console: a real terminal, colours allowed."""
    return console.is_terminal and not console.is_dumb_terminal and not no_color()


def print_table(console: Console, table: Table) -> None:
    """On a terminal, as wide as the terminal; elsewhere as wide as its content, unwrapped."""
    if not console.is_terminal:
        natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
        console.width = max(console.width, natural)
    console.print(table)


def build_events(console: Console) -> RichEvents | PlainEvents:
    """The view of build events for this console (both are context managers)."""
    return RichEvents(console) if is_live(console) else PlainEvents(console)


class RichEvents:
    """Live stage view: one line per stage, a progress bar while it runs."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<9}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> RichEvents:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def stage(self, name: str, detail: str = "") -> None:
        self._tasks[name] = self._progress.add_task("", total=None, stage=escape(name),
                                                    detail=escape(detail))

    def progress(self, name: str, done: int, total: int, detail: str = "") -> None:
        task = self._tasks.get(name)
        if task is None:
            self.stage(name)
            task = self._tasks[name]
        self._progress.update(task, completed=done, total=total, detail=escape(detail))

    def note(self, message: str) -> None:
        self._progress.console.print(Text.assemble(("note:", "yellow"), f" {message}"))

    def stage_done(self, name: str, summary: str = "") -> None:
        task = self._tasks[name]
        total = self._progress.tasks[self._tasks[name]].total or 1
        self._progress.update(task, completed=total, total=total,
                              detail=f"[green]✓[/] {escape(summary)}")


class PlainEvents:
    """The same events as plain lines for a pipe or a CI log: a stage when it starts, its
    progress at every tenth of the way, and when it ends with its time; notes as they come."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._started: dict[str, float] = {}
        self._shown: dict[str, int] = {}  # the last tenth of progress printed, per stage

    def __enter__(self) -> PlainEvents:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _line(self, name: str, text: str) -> None:
        self._console.print(f"{name:<9} {text}".rstrip(), markup=False, highlight=False)

    def stage(self, name: str, detail: str = "") -> None:
        self._started[name], self._shown[name] = time.monotonic(), -1
        self._line(name, detail)

    def progress(self, name: str, done: int, total: int, detail: str = "") -> None:
        if name not in self._started:
            self.stage(name)
        tenth = done * 10 // total if total else 0
        if tenth > self._shown[name]:
            self._shown[name] = tenth
            self._line(name, f"{done}/{total} {detail}")

    def note(self, message: str) -> None:
        self._console.print(f"note: {message}", markup=False, highlight=False)

    def stage_done(self, name: str, summary: str = "") -> None:
        started = self._started.get(name, time.monotonic())
        elapsed = timedelta(seconds=round(time.monotonic() - started))
        self._line(name, f"✓ {summary} ({elapsed})" if summary else f"✓ ({elapsed})")


class CountBar:
    """A progress bar on stderr for a run of calls (``bar(what, done, total)``), shown only on
    a live terminal and when there are more than a few calls."""

    def __init__(self) -> None:
        self._progress = None
        self._task = None
        self._off = False  # not a live terminal: no bar at all

    def __call__(self, what: str, done: int, total: int) -> None:
        if total <= _FEW or self._off:
            return
        if self._progress is None:
            console = stderr_console()
            if not is_live(console):
                self._off = True
                return
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=console, transient=True)
            self._progress.start()
        if done == 0 or self._task is None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(f"{what}ing", total=total)
        self._progress.update(self._task, completed=done)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextlib.contextmanager
def count_bar():
    bar = CountBar()
    try:
        yield bar
    finally:
        bar.close()


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def eval_table(report: dict) -> Table:
    table = Table(title=f"Quants vs F16 on held-out data (target {report.get('target', '-')})")
    for col in ("quant", "size", "RAM needed", "PPL ratio", "mean KLD", "top-1", "task acc.",
                "decode tok/s", "gate"):
        table.add_column(col, justify="left" if col in ("quant", "gate") else "right")
    from edgetune.report.tables import (accuracy_notes, ordered_quants, quant_label, size_label,
                                        size_notes)

    # Fallbacks and quants that add nothing, and checks that could not judge, under the table.
    if notes := size_notes(report) + [f"Not judged: {n}." for n in accuracy_notes(report)]:
        table.caption = " ".join(notes)
    for quant, m in ordered_quants(report):  # F16, then by size as in eval.md
        gate = m.get("gate")
        verdict = "-" if gate is None else (Text("pass", "green") if gate["passed"]
                                            else Text("FAIL", "red"))
        acc = m.get("task_accuracy")
        bpw = m.get("bits_per_weight")
        table.add_row(quant_label(quant, m),
                      _mib(m["size_bytes"]) + (f", {bpw:.1f} bpw" if bpw else ""),
                      _mib(m["ram_needed_bytes"]),
                      f"{m.get('ppl_ratio', 1.0):.4f}", f"{m.get('kld_mean', 0.0):.4f}",
                      f"{m.get('top1', 1.0):.1%}", "-" if acc is None else f"{acc:.1%}",
                      f"{m['decode_tps']:,.0f}", verdict)
    return table


def gate_table(failure) -> Table:
    """What failed and why, one row per failed check (from a GateFailure)."""
    from edgetune.gates import failures_table_rows

    table = Table(title="Failed quality gates")
    table.add_column("quant")
    table.add_column("why")
    for quant, reason in failures_table_rows(failure.results):
        table.add_row(quant, reason)
    return table
