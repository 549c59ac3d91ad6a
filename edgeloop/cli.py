"""The `edgeloop` command: parses arguments, sets up the environment, calls into the packages.

Errors a user can act on (``EdgeloopError``) print one line and exit 1; anything else prints one
line too, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeloop.errors import EdgeloopError
from edgeloop.prefect_api import start_prefect_api
from edgeloop.settings import Settings

app = typer.Typer(
    help="edgeloop: train, compress, validate and register models for edge fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


class _State:
    debug = False


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and library logs.")
    ] = False,
) -> None:
    _State.debug = debug


def _prepare(settings: Settings) -> None:
    """Environment for Prefect and MLflow, set before either is imported."""
    settings.export_environment()
    level = "INFO" if _State.debug else "CRITICAL"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", level)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if _State.debug else "WARNING")
    if not _State.debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)


def _guard(action: Callable[[], T]) -> T:
    try:
        return action()
    except typer.Exit:
        raise
    except EdgeloopError as exc:
        if _State.debug:
            raise
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if _State.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err_console.print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {escape(first)} "
            "(run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _run_flow(settings: Settings, start: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    from edgeloop.display import StageDisplay, gates_table, variants_table
    from flows.progress import add_listener, remove_listener

    display = StageDisplay(console)
    add_listener(display)
    try:
        with display:
            summary = start()
    finally:
        remove_listener(display)
        console.print(display.stage_table())
    summary["stages"] = [
        {"stage": s, "ok": ok, "seconds": round(sec, 2), "detail": d}
        for s, ok, sec, d in display.rows
    ]
    summary["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    settings.last_run_file.parent.mkdir(parents=True, exist_ok=True)
    settings.last_run_file.write_text(json.dumps(summary, indent=2, default=str))
    console.print(variants_table(summary))
    console.print(gates_table(summary))
    aliases = ", ".join(summary["aliases"]) or "none (a gate failed; see above)"
    console.print(
        f"[bold]{summary['model']} v{summary['version']}[/] registered, aliases: {aliases}\n"
        f"model card: {summary['model_card']['markdown']}\n"
        f"summary: {settings.last_run_file}   tracking: {summary['tracking_uri']}",
        highlight=False,
    )
    return summary


def _exit_on_failed_gates(summary: dict[str, Any]) -> None:
    """Exit 3 when the version was registered but did not become ``candidate``."""
    if "candidate" in summary["aliases"]:
        return
    failed = ", ".join(g["name"] for g in summary["gates"] if not g["passed"])
    err_console.print(
        f"[red]error:[/] {summary['model']} v{summary['version']} is registered without alias "
        f"candidate: gate(s) failed: {escape(failed)}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(3)


def _preflight(settings: Settings) -> threading.Thread:
    """Fail fast on bad params, profiles or tracking URI; then start the Prefect API."""
    from edgeloop.params import load_params
    from registry.tracking import preflight

    params = load_params(settings.params_file)
    _check_profiles(settings, params.gates.profiles)
    preflight(settings.tracking_uri)
    api = start_prefect_api()  # boots while torch and the plugins import
    from flows.datasets import LOADERS
    from flows.models import BUILDERS
    from flows.plugins import resolve

    resolve("dataset loader", params.data.loader, LOADERS)
    resolve("model builder", params.training.builder, BUILDERS)
    return api


def _check_profiles(settings: Settings, profiles: list[str]) -> None:
    from edgeloop.errors import ConfigError
    from fleet.agent.profile import ProfileError, load_profile

    for name in profiles:
        try:
            load_profile(name, settings.profiles_dir)
        except ProfileError as exc:
            raise ConfigError(str(exc), hint="fix gates.profiles in params.yaml") from exc


@app.command()
def run() -> None:
    """Run the offline loop once: data checks, train, compress, hardware check, register."""

    def go() -> None:
        settings = Settings()
        _prepare(settings)
        api = _preflight(settings)
        from flows.retrain import retrain_flow

        api.join()
        _exit_on_failed_gates(_run_flow(settings, lambda: retrain_flow(settings=settings)))

    _guard(go)


@app.command()
def register(
    path: Annotated[Path, typer.Argument(help="An ONNX model trained elsewhere.")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset loader name it was trained on.")
    ],
) -> None:
    """Take a model trained elsewhere through the same checks, compression and registration."""

    def go() -> None:
        settings = Settings()
        _prepare(settings)
        from flows.datasets import load_dataset
        from flows.onnxfile import check_model_file
        from registry.tracking import preflight

        _check_name(name)
        check_model_file(path, load_dataset(dataset).schema)
        preflight(settings.tracking_uri)
        api = start_prefect_api()
        from flows.retrain import register_flow

        api.join()
        _exit_on_failed_gates(
            _run_flow(
                settings,
                lambda: register_flow(
                    model_path=path, model_name=name, dataset=dataset, settings=settings
                ),
            )
        )

    _guard(go)


def _check_name(name: str) -> None:
    import re

    from edgeloop.errors import ConfigError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"model name {name!r} is not valid",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )


@app.command()
def models(
    name: Annotated[str | None, typer.Option("--name", help="Only this registered model.")] = None,
) -> None:
    """List registered versions with their aliases and key tags."""

    def go() -> None:
        settings = Settings()
        _prepare(settings)
        from registry.catalog import list_versions
        from registry.tracking import connect

        rows = list_versions(connect(settings.tracking_uri), name)
        table = Table(title=f"registered versions ({settings.tracking_uri})")
        for column in (
            "model",
            "version",
            "aliases",
            "variant",
            "gates",
            "git commit",
            "data hash",
            "created",
        ):
            table.add_column(column)
        for r in rows:
            created = datetime.fromtimestamp(r.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(
                r.model,
                r.version,
                ", ".join(r.aliases) or "-",
                r.tags.get("edgeloop.variant", "-"),
                r.tags.get("edgeloop.gates", "-"),
                r.tags.get("edgeloop.git_commit", "-")[:10],
                r.tags.get("edgeloop.data.hash", "-")[:12],
                created,
            )
        console.print(table if rows else "no registered versions yet: run `edgeloop run`")

    _guard(go)


@app.command()
def validate(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION")],
    profile: Annotated[str, typer.Option("--profile", help="Hardware profile name or YAML path.")],
) -> None:
    """Run the hardware-tests suite on a registered version and record the result on it."""

    def go() -> None:
        settings = Settings()
        _prepare(settings)
        _check_profiles(settings, [profile])
        from flows.validate_registered import validate_registered

        result = validate_registered(settings, model_uri, profile, settings.work_dir / "validate")
        colour = "green" if result.passed else "red"
        console.print(f"{model_uri} on {profile}: [{colour}]{result.status}[/]", highlight=False)
        for key in ("p50_ms", "p95_ms", "p99_ms", "accuracy", "peak_rss_mb"):
            if key in result.metrics:
                console.print(f"  {key}: {result.metrics[key]:.4g}")
        for failure in result.failures:
            console.print(f"  [red]{escape(failure)}[/]", highlight=False)
        console.print(f"  reports: {result.junit_path}, {result.report_path}", highlight=False)
        if not result.passed:
            raise typer.Exit(3)

    _guard(go)


runner_app = typer.Typer(help="Hardware runners: Prefect workers on the pools hw-<profile>.")
app.add_typer(runner_app, name="runner")


@runner_app.command("start")
def runner_start(
    profile: Annotated[str, typer.Option("--profile", help="The hardware profile this device is.")],
) -> None:
    """Start a Prefect worker on pool hw-<profile> (this process becomes the worker)."""

    def go() -> None:
        from edgeloop.errors import ConfigError

        settings = Settings()
        _prepare(settings)
        if not settings.prefect_api_url:
            raise ConfigError(
                "a hardware runner needs a Prefect server",
                hint="start one with `prefect server start` and set PREFECT_API_URL",
            )
        _check_profiles(settings, [profile])
        from flows.pool import ensure_deployment, pool_name

        ensure_deployment(profile)
        prefect = str(Path(sys.executable).with_name("prefect"))
        os.environ.setdefault("EDGELOOP_PROFILES_DIR", str(settings.profiles_dir.resolve()))
        os.environ.setdefault(
            "EDGELOOP_HARDWARE_TESTS_DIR", str(settings.hardware_tests_dir.resolve())
        )
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"  # a worker's log is its UI
        console.print(f"runner for {profile}: worker on pool {pool_name(profile)}", highlight=False)
        os.execv(
            prefect, [prefect, "worker", "start", "--pool", pool_name(profile), "--type", "process"]
        )

    _guard(go)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
