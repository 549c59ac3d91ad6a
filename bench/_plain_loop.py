"""Helper of ``bench/loop_overhead.py``: the offline loop's compute as plain function calls.

Run in a fresh interpreter with the working directory holding ``params.yaml`` and
``hardware-tests/``: ingest, validate, train, compress and evaluate (:mod:`flows.stages`) into
``plain/``, then the hardware-tests suite (:func:`flows.hardware.run_profile`) on the chosen variant
for every profile in ``gates.profiles``, the way ``edgeloop run`` does, but with no Prefect, no
MLflow, no registration and no display. Prints one JSON line: seconds per step and the outcome.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from edgeloop.core.params import load_params  # noqa: E402
from flows import stages  # noqa: E402
from flows.hardware import run_profile  # noqa: E402
from flows.workspace import Workspace  # noqa: E402


def main() -> None:
    seconds = {"imports": time.perf_counter() - STARTED}
    params = load_params(Path("params.yaml"))
    ws = Workspace(Path("plain/splits"), Path("plain/work"))
    outcome: dict[str, object] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = step()
        seconds[name] = time.perf_counter() - start
        return value

    timed("ingest", lambda: stages.ingest(params, ws))
    timed("validate", lambda: stages.validate(params, ws))
    timed("train", lambda: stages.train_model(params, ws))
    timed("compress", lambda: stages.compress(params, ws))
    evaluation = timed("evaluate", lambda: stages.evaluate(params, ws))
    chosen = evaluation["chosen"]

    def hardware() -> dict[str, str]:
        return {
            profile: run_profile(
                ws.variants_dir / f"{chosen}.onnx",
                profile,
                ws.golden,
                ws.hardware_dir,
                reference=ws.fp32,
                suite_dir=Path("hardware-tests"),
                profiles_dir=Path("hardware-tests/profiles"),
            ).status
            for profile in params.gates.profiles
        }

    outcome["hardware"] = timed("hardware", hardware)
    outcome["chosen"] = chosen
    outcome["test_accuracy"] = evaluation[f"split_{evaluation['metric']}"]["test"]
    seconds["total_in_process"] = time.perf_counter() - STARTED
    print(json.dumps({"seconds": seconds, **outcome}))


if __name__ == "__main__":
    main()
