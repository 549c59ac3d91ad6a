"""The `edgeloop` command: parses arguments and calls into the packages.

Each group of commands lives in its own module (``loop``, ``hardware``, ``runner``, ...); this
one assembles them and holds the global options.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop.cli import fleet as cli_fleet
from edgeloop.cli import hardware as cli_hardware
from edgeloop.cli import image as cli_image
from edgeloop.cli import listener as cli_listener
from edgeloop.cli import loop as cli_loop
from edgeloop.cli import place as cli_place
from edgeloop.cli import registry as cli_registry
from edgeloop.cli import runner as cli_runner
from edgeloop.cli import serve as cli_serve
from edgeloop.cli.common import State

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
app.add_typer(cli_runner.runner_app, name="runner")
app.add_typer(cli_fleet.fleet_app, name="fleet")
app.add_typer(cli_fleet.rollout_app, name="rollout")
app.add_typer(cli_image.image_app, name="image")
app.add_typer(cli_listener.listener_app, name="listener")
app.add_typer(cli_registry.registry_app, name="registry")


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and library logs.")
    ] = False,
) -> None:
    State.debug = debug
