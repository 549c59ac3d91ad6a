"""edgeloop: MLOps workflow orchestration and model registry for edge fleets.

This package holds the pieces every other package shares (settings, errors, the
params file schema) and the `edgeloop` CLI, which only parses and calls into
`flows`, `registry` and `fleet`.
"""

__version__ = "0.1.0"
