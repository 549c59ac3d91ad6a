"""`edgeloop image build`: the agent and trainer images, built with the Docker SDK."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from edgeloop import __version__
from edgeloop.cli.common import console, guard

image_app = typer.Typer(help="Docker images: the edge agent and the trainer.")


@image_app.command("build")
def build(
    which: Annotated[str, typer.Argument(help="agent, trainer or all")] = "all",
    tag: Annotated[
        str, typer.Option("--tag", help="Image tag (a version, never latest).")
    ] = __version__,
) -> None:
    """Build the images from docker/ with the local Docker engine (DOCKER_HOST)."""

    def go() -> None:
        from edgeloop.cli import images

        specs = images.select(which)
        client = images.engine()
        built = images.build(
            client,
            specs,
            tag=tag,
            on_line=lambda line: console.print(f"  {escape(line)}", highlight=False),
        )
        console.print(f"[green]built[/] {', '.join(built)}", highlight=False)

    guard(go)
