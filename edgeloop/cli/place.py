"""`edgeloop place`: training placed on the cheapest live training pool, with failover."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgeloop.cli.common import console, guard, prepare, require_prefect_api
from edgeloop.core.placement_params import TrainingPool
from edgeloop.core.settings import Settings

if TYPE_CHECKING:
    from flows.placement import PlacementDecision

app = typer.Typer()


def decision_table(decision: PlacementDecision, pools: list[TrainingPool], title: str) -> Table:
    table = Table(title=title)
    for column in ("pool", "provider", "region", "cost/h", "residency", "accelerator", "", "why"):
        table.add_column(column)
    by_name = {p.name: p for p in pools}
    for v in decision.verdicts:
        pool = by_name[v.pool]
        mark = (
            "[green]chosen[/]"
            if v.chosen
            else ("[yellow]ok[/]" if v.eligible and v.healthy else "[red]skip[/]")
        )
        table.add_row(
            v.pool,
            v.provider,
            v.region,
            f"{v.cost_per_hour:g}",
            pool.data_residency,
            pool.accelerator,
            mark,
            v.reason,
        )
    return table


@app.command()
def place(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show where the job would go now, and why.")
    ] = False,
) -> None:
    """Train on the cheapest live pool of params.yaml `placement`, failing over when it fails."""

    def go() -> None:
        from edgeloop.core.params import load_params

        settings = Settings()
        prepare(settings)
        params = load_params(settings.params_file)
        require_prefect_api(settings, "training placement")
        placement = params.placement
        if dry_run:
            from flows.placement import PlacementError, place
            from flows.placement_pools import pool_health

            names = [p.name for p in placement.pools]
            decision = place(placement.pools, placement.constraints, pool_health(names))
            console.print(decision_table(decision, placement.pools, "training placement (dry run)"))
            if decision.chosen is None:
                raise PlacementError(
                    f"no training pool can take the job: {decision.explain()}",
                    hint="start a worker on one of these pools or relax placement.constraints",
                )
            return
        from registry.tracking import preflight

        preflight(settings.tracking_uri)
        from flows.placement_flow import placed_retrain

        summary = placed_retrain(settings=settings)
        record = summary.placement
        if record is None:
            console.print(
                f"{summary.model} v{summary.version} already registered for run key "
                f"{summary.run_key}: nothing to train",
                highlight=False,
            )
            return
        for i, decision in enumerate(record.decisions, 1):
            console.print(decision_table(decision, placement.pools, f"placement decision {i}"))
        attempts = Table(title="attempts")
        for column in ("pool", "flow run", "outcome", "seconds", "reason"):
            attempts.add_column(column)
        for a in record.attempts:
            attempts.add_row(a.pool, a.run_id, a.outcome, f"{a.seconds:.0f}", a.reason)
        console.print(attempts)
        console.print(
            f"[bold]{summary.model} v{summary.version}[/] trained on pool {record.pool} "
            f"(run key {summary.run_key})",
            highlight=False,
        )

    guard(go)
