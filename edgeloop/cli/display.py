"""The terminal display of a run: a live line per stage, then closing tables (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from flows.run_summary import RunSummary


class StageDisplay:
    """A flows.progress listener that shows each stage while it runs and keeps its outcome."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<10}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self.rows: list[tuple[str, bool, float, str]] = []

    def __enter__(self) -> StageDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def started(self, stage: str) -> None:
        self._tasks[stage] = self.progress.add_task(stage, total=1, detail="running…")

    def finished(self, stage: str, seconds: float, detail: str, ok: bool) -> None:
        mark = "[green]done[/]" if ok else "[red]failed[/]"
        self.progress.update(self._tasks[stage], completed=1, detail=f"{mark} {detail}")
        self.rows.append((stage, ok, seconds, detail))

    def stage_table(self) -> Table:
        table = Table(title="stages")
        for column in ("stage", "status", "seconds", "detail"):
            table.add_column(column)
        for stage, ok, seconds, detail in self.rows:
            table.add_row(stage, "ok" if ok else "failed", f"{seconds:.1f}", detail)
        return table


def variants_table(summary: RunSummary) -> Table:
    table = Table(title=f"{summary.model} v{summary.version}: variants (1 thread, batch 1)")
    regression = summary.metric == "mae"
    quality = "test MAE" if regression else "test acc"
    for column in ("variant", "size KB", quality, "p50 ms", "p95 ms", ""):
        table.add_column(column)
    for v in summary.variants:
        chosen = "chosen" if v.name == summary.chosen_variant else ""
        value = v.mae if regression else v.accuracy
        table.add_row(
            v.name,
            f"{v.size_bytes / 1024:.0f}",
            f"{value:.4g}" if regression and value is not None else f"{value or 0:.4f}",
            f"{v.p50_ms:.4f}",
            f"{v.p95_ms:.4f}",
            chosen,
        )
    return table


def gates_table(summary: RunSummary) -> Table:
    table = Table(title="gates")
    for column in ("gate", "result", "measured", "threshold"):
        table.add_column(column)
    for g in summary.gates:
        result = "[green]pass[/]" if g.passed else "[red]fail[/]"
        table.add_row(g.name, result, str(g.measured), str(g.threshold))
    return table
