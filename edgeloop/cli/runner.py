"""`edgeloop runner start`: a hardware runner, the Prefect worker of the pool ``hw-<profile>``.

This is the device side: it runs with ``pip install 'edgeloop[runner]'`` (no training stack), and
each flow run brings what it needs through the MLflow run (:mod:`flows.runner_flow`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeloop.cli.common import console, guard, prepare, require_prefect_api
from edgeloop.core.settings import Settings

runner_app = typer.Typer(help="Hardware runners: Prefect workers on the pools hw-<profile>.")


@runner_app.command("start")
def runner_start(
    profile: Annotated[str, typer.Option("--profile", help="The hardware profile this device is.")],
) -> None:
    """Start a Prefect worker on pool hw-<profile> (this process becomes the worker).

    It needs `pip install 'edgeloop[runner]'`, PREFECT_API_URL and nothing else from the build
    host: each flow run brings its variant, the suite and the profile's budgets through MLflow."""

    def go() -> None:
        from edgeloop.core.errors import ConfigError

        settings = Settings()
        prepare(settings)
        require_prefect_api(settings, "a hardware runner")
        from fleet.shared.profile import NAME_PATTERN

        if not re.fullmatch(NAME_PATTERN, profile):
            raise ConfigError(
                f"{profile!r} is not a hardware profile name",
                hint="use the name of a profile in gates.profiles (lower-case letters, digits, '-')",
            )
        from flows.pool import ensure_process_pools, pool_name

        ensure_process_pools([pool_name(profile)])
        prefect = str(Path(sys.executable).with_name("prefect"))
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"  # a worker's log is its UI
        console.print(f"runner for {profile}: worker on pool {pool_name(profile)}", highlight=False)
        os.execv(
            prefect, [prefect, "worker", "start", "--pool", pool_name(profile), "--type", "process"]
        )

    guard(go)
