"""What every `edgeloop` command shares: the consoles, the environment set-up and the error guard.

Errors a user can act on (``EdgeloopError``) print one line and exit 1; anything else prints one
line too, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from edgeloop.core.errors import ConfigError, EdgeloopError
from edgeloop.core.settings import Settings

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


class State:
    """Global options, set by the callback before any command runs."""

    debug = False


def prepare(settings: Settings) -> None:
    """Environment for Prefect and MLflow, set before either is imported."""
    settings.export_environment()
    level = "INFO" if State.debug else "CRITICAL"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", level)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if State.debug else "WARNING")
    if not State.debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)


def require_prefect_api(settings: Settings, what: str) -> str:
    """The Prefect API's URL; a ConfigError saying that ``what`` needs one when none is set."""
    if not settings.prefect_api_url:
        raise ConfigError(
            f"{what} needs a Prefect server: PREFECT_API_URL is not set",
            hint="set PREFECT_API_URL to the platform's Prefect API (`edgeloop serve` prints it)",
        )
    return settings.prefect_api_url


def guard(action: Callable[[], T]) -> T:
    try:
        return action()
    except typer.Exit:
        raise
    except EdgeloopError as exc:
        if State.debug:
            raise
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if State.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err_console.print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {escape(first)} "
            "(run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def check_profiles(settings: Settings, profiles: list[str]) -> None:
    from edgeloop.core.errors import ConfigError
    from fleet.shared.profile import ProfileError, load_profile

    for name in profiles:
        try:
            load_profile(name, settings.profiles_dir)
        except ProfileError as exc:
            raise ConfigError(str(exc), hint="fix gates.profiles in params.yaml") from exc


def check_name(name: str) -> None:
    import re

    from edgeloop.core.errors import ConfigError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"model name {name!r} is not valid",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
