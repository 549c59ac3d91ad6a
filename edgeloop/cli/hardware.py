"""`edgeloop validate` and `edgeloop runner start`: hardware validation outside the loop."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgeloop.cli.common import check_profiles, console, guard, prepare
from edgeloop.core.settings import Settings

app = typer.Typer()


@app.command()
def validate(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION")],
    profile: Annotated[str, typer.Option("--profile", help="Hardware profile name or YAML path.")],
) -> None:
    """Run the hardware-tests suite on a registered version and record the result on it."""

    def go() -> None:
        settings = Settings()
        prepare(settings)
        check_profiles(settings, [profile])
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

    guard(go)


runner_app = typer.Typer(help="Hardware runners: Prefect workers on the pools hw-<profile>.")


@runner_app.command("start")
def runner_start(
    profile: Annotated[str, typer.Option("--profile", help="The hardware profile this device is.")],
) -> None:
    """Start a Prefect worker on pool hw-<profile> (this process becomes the worker)."""

    def go() -> None:
        from edgeloop.core.errors import ConfigError

        settings = Settings()
        prepare(settings)
        if not settings.prefect_api_url:
            raise ConfigError(
                "a hardware runner needs a Prefect server",
                hint="start one with `prefect server start` and set PREFECT_API_URL",
            )
        check_profiles(settings, [profile])
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

    guard(go)
