"""`edgeloop validate`: hardware validation of a registered version, outside the loop."""

from __future__ import annotations

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
