"""Rich rendering of pipeline events and results. Only the CLI imports this module."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)
out = Console()


class RichEvents:
    """Live stage view: one line per stage, a progress bar while it runs."""

    def __init__(self) -> None:
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
        self._tasks[name] = self._progress.add_task("", total=None, stage=name, detail=detail)

    def progress(self, name: str, done: int, total: int, detail: str = "") -> None:
        task = self._tasks.get(name)
        if task is None:
            self.stage(name)
            task = self._tasks[name]
        self._progress.update(task, completed=done, total=total, detail=detail)

    def note(self, message: str) -> None:
        self._progress.console.print(f"[yellow]note:[/] {message}")

    def stage_done(self, name: str, summary: str = "") -> None:
        task = self._tasks[name]
        total = self._progress.tasks[self._tasks[name]].total or 1
        self._progress.update(task, completed=total, total=total, detail=f"[green]✓[/] {summary}")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def eval_table(report: dict) -> Table:
    table = Table(title=f"Quants vs F16 on held-out data (target {report.get('target', '-')})")
    for col in ("quant", "size", "RAM needed", "PPL ratio", "mean KLD", "top-1", "task acc.",
                "decode tok/s", "gate"):
        table.add_column(col, justify="left" if col in ("quant", "gate") else "right")
    from edgetune.report import ordered_quants

    for quant, m in ordered_quants(report):  # F16, then by size as in eval.md
        gate = m.get("gate")
        verdict = "-" if gate is None else ("[green]pass[/]" if gate["passed"] else "[red]FAIL[/]")
        acc = m.get("task_accuracy")
        table.add_row(quant, _mib(m["size_bytes"]), _mib(m["ram_needed_bytes"]),
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
