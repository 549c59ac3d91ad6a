"""edgeloop: MLOps workflow orchestration and model registry for edge fleets.

Two layers live here: ``edgeloop.core`` at the bottom (settings, errors, the params file's schema),
which every package may import, and ``edgeloop.cli`` at the top (the ``edgeloop`` command), which
only parses and calls into ``flows``, ``registry`` and ``fleet``.
"""

__version__ = "0.1.0"
