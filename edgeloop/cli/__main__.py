"""``python -m edgeloop.cli``: the same command as the ``edgeloop`` script."""

import sys

from edgeloop.cli.app import app

sys.exit(app())
