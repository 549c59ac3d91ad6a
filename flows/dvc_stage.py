"""The DVC driver: ``python -m flows.dvc_stage <stage>`` runs one stage of dvc.yaml.

It calls the same functions as the Prefect flow (:mod:`flows.stages`); registration is not a DVC stage
because it writes to the registry, not to files DVC can cache.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.params import Params, load_params
from edgeloop.core.settings import Settings
from flows import stages
from flows.workspace import Workspace

STAGES: dict[str, Callable[[Params, Workspace], Any]] = {
    "ingest": stages.ingest,
    "validate": stages.validate,
    "train": stages.train_model,
    "compress": stages.compress,
    "evaluate": stages.evaluate,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m flows.dvc_stage {{{'|'.join(STAGES)}}}", file=sys.stderr)
        return 2
    settings = Settings()
    try:
        params = load_params(settings.params_file)
        STAGES[argv[0]](params, Workspace(settings.splits_dir, settings.work_dir))
    except EdgeloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
