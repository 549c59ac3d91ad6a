"""`edgeloop run`, `register` and `models`: the offline loop and what it registered."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from edgeloop.cli.common import check_name, check_profiles, console, err_console, guard, prepare
from edgeloop.cli.prefect_api import start_prefect_api
from edgeloop.core.settings import Settings
from registry import tags as tag

if TYPE_CHECKING:
    from flows.run_summary import RunSummary

app = typer.Typer()


def _run_flow(settings: Settings, start: Callable[[], RunSummary]) -> RunSummary:
    from edgeloop.cli.display import StageDisplay, gates_table, variants_table
    from flows.progress import add_listener, remove_listener

    display = StageDisplay(console)
    add_listener(display)
    try:
        with display:
            summary = start()
    finally:
        remove_listener(display)
        console.print(display.stage_table())
    written = summary.model_dump(mode="json")
    written["stages"] = [
        {"stage": s, "ok": ok, "seconds": round(sec, 2), "detail": d}
        for s, ok, sec, d in display.rows
    ]
    written["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    settings.last_run_file.parent.mkdir(parents=True, exist_ok=True)
    settings.last_run_file.write_text(json.dumps(written, indent=2, default=str))
    console.print(variants_table(summary))
    console.print(gates_table(summary))
    aliases = ", ".join(summary.aliases) or "none (a gate failed; see above)"
    console.print(
        f"[bold]{summary.model} v{summary.version}[/] registered, aliases: {aliases}\n"
        f"model card: {summary.model_card['markdown']}\n"
        f"summary: {settings.last_run_file}   tracking: {summary.tracking_uri}",
        highlight=False,
    )
    return summary


def _exit_on_failed_gates(summary: RunSummary) -> None:
    """Exit 3 when the version was registered but did not become ``candidate``."""
    if "candidate" in summary.aliases:
        return
    failed = ", ".join(summary.failed_gates())
    err_console.print(
        f"[red]error:[/] {summary.model} v{summary.version} is registered without alias "
        f"candidate: gate(s) failed: {escape(failed)}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(3)


def _preflight(settings: Settings) -> threading.Thread:
    """Fail fast on bad params, profiles or tracking URI; then start the Prefect API."""
    from edgeloop.core.params import load_params
    from registry.tracking import preflight

    params = load_params(settings.params_file)
    check_profiles(settings, params.gates.profiles)
    preflight(settings.tracking_uri)
    api = start_prefect_api()  # boots while torch and the plugins import
    from flows.datasets import LOADERS
    from flows.models import BUILDERS
    from flows.plugins import resolve

    resolve("dataset loader", params.data.loader, LOADERS)
    resolve("model builder", params.training.builder, BUILDERS)
    return api


@app.command()
def run(
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="Another parameters file (e.g. examples/digits-cnn/params.yaml); its model "
            "gets a work folder of its own, so the project's own model is left as it is.",
        ),
    ] = None,
) -> None:
    """Run the offline loop once: data checks, train, compress, hardware check, register."""

    def go() -> None:
        settings = Settings() if params is None else Settings(params_file=params)
        prepare(settings)
        api = _preflight(settings)
        from flows.retrain import retrain_flow

        api.join()
        own = params is not None
        _exit_on_failed_gates(
            _run_flow(settings, lambda: retrain_flow(settings=settings, own_workspace=own))
        )

    guard(go)


@app.command()
def register(
    path: Annotated[Path, typer.Argument(help="An ONNX model trained elsewhere.")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset loader name it was trained on.")
    ],
    contract: Annotated[
        Path | None,
        typer.Option(
            "--contract",
            help="YAML of what the graph cannot say: task, class_names, inputs: {NAME: {layout, "
            "value_range}}, outputs: {NAME: probabilities|logits|label|regression}, "
            "preprocessing. Default: MODEL.yaml beside the model when it exists.",
        ),
    ] = None,
) -> None:
    """Take a model trained elsewhere through the same checks, compression and registration.

    Its inputs take one dataset row per sample, split across the inputs in order and reshaped to
    each input's shape (a [N, 1, 8, 8] input takes the 64 pixels of a digits row)."""

    def go() -> None:
        settings = Settings()
        prepare(settings)
        from flows.datasets import load_dataset
        from flows.model_contract import ContractOverrides
        from flows.onnxfile import check_model_file
        from registry.tracking import preflight

        check_name(name)
        stated = contract
        if stated is None and path.with_suffix(".yaml").is_file():
            stated = path.with_suffix(".yaml")
        overrides = ContractOverrides.load(stated) if stated else None
        spec = check_model_file(path, load_dataset(dataset).schema, overrides)
        console.print(f"contract: {escape(spec.summary())}")
        preflight(settings.tracking_uri)
        api = start_prefect_api()
        from flows.retrain import register_flow

        api.join()
        _exit_on_failed_gates(
            _run_flow(
                settings,
                lambda: register_flow(
                    model_path=path,
                    model_name=name,
                    dataset=dataset,
                    settings=settings,
                    contract=stated,
                ),
            )
        )

    guard(go)


@app.command()
def models(
    name: Annotated[str | None, typer.Option("--name", help="Only this registered model.")] = None,
) -> None:
    """List registered versions with their aliases and key tags."""

    def go() -> None:
        settings = Settings()
        prepare(settings)
        from registry.catalog import list_versions
        from registry.tracking import connect

        rows = list_versions(connect(settings.tracking_uri), name)
        tables = []
        for model in sorted({r.model for r in rows}):
            table = Table(title=f"{model} ({settings.tracking_uri})", box=box.SIMPLE_HEAD)
            for column in ("version", "aliases", "rollout", "gates", "variant", "created"):
                table.add_column(column, overflow="fold")  # wrapped at 80 columns, never cut
            for r in (r for r in rows if r.model == model):
                created = datetime.fromtimestamp(r.created_ms / 1000, UTC)
                table.add_row(
                    r.version,
                    ", ".join(r.aliases) or "-",
                    r.tags.get(tag.ROLLOUT_STATUS, "-"),
                    r.tags.get(tag.GATES, "-"),
                    r.tags.get(tag.VARIANT, "-"),
                    created.strftime("%Y-%m-%d %H:%M"),
                )
            tables.append(table)
        console.print(Group(*tables) if rows else "no registered versions yet: run `edgeloop run`")

    guard(go)
