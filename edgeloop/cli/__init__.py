"""The `edgeloop` command line: typer commands, the serve supervisor and image builds.

The top layer: it parses, calls into ``flows``, ``registry`` and ``fleet``, and prints. Nothing below
imports it.
"""

from edgeloop.cli.app import app

__all__ = ["app"]
