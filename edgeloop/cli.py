"""The `edgeloop` command: parses arguments and calls into the packages.

Each group of commands lives in its own module (``cli_loop``, ``cli_hardware``); this one assembles
them and holds the global options.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edgeloop import (
    cli_fleet,
    cli_hardware,
    cli_image,
    cli_listener,
    cli_loop,
    cli_place,
    cli_serve,
)
from edgeloop.cli_common import State

app = typer.Typer(
    help="edgeloop: train, compress, validate and register models for edge fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.registered_commands += cli_loop.app.registered_commands
app.registered_commands += cli_hardware.app.registered_commands
app.registered_commands += cli_fleet.app.registered_commands
app.registered_commands += cli_place.app.registered_commands
app.registered_commands += cli_serve.app.registered_commands
app.add_typer(cli_hardware.runner_app, name="runner")
app.add_typer(cli_fleet.fleet_app, name="fleet")
app.add_typer(cli_fleet.rollout_app, name="rollout")
app.add_typer(cli_image.image_app, name="image")
app.add_typer(cli_listener.listener_app, name="listener")


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and library logs.")
    ] = False,
) -> None:
    State.debug = debug


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
