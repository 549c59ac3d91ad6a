"""`dvc repro` runs the same stages as the flow, and the flow's data hash is DVC's.

It runs in a fresh clone of the project (tests/integration/project_clone.py), so the project's own
dvc.lock, .gitignore files and DVC config are what it meets, as on a user's `git clone`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from project_clone import clone_project, environment, git, run
from training_params import FAST_PARAMS

from registry.lineage import dvc_dir_hash

pytestmark = pytest.mark.integration


def test_dvc_repro_runs_end_to_end_and_hashes_match(tmp_path: Path) -> None:
    work = clone_project(tmp_path / "clone", training={"epochs": 3}, **FAST_PARAMS)
    env = environment()
    first = run(work, env, "dvc", "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("ingest", "validate", "train", "compress", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout  # a fresh clone has none of the outputs
    for out in (
        "data/splits/train.parquet",
        ".edgeloop/work/variants/int8-static.onnx",
        ".edgeloop/work/evaluation.json",
    ):
        assert (work / out).is_file(), out
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    splits_out = next(o for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/splits")
    assert splits_out["md5"] == dvc_dir_hash(work / "data" / "splits")
    # The committed lock is updated in place; DVC added no .gitignore entry, nothing is untracked.
    assert set(git(work, "status", "--porcelain", "--untracked-files=all").splitlines()) <= {
        " M dvc.lock"
    }
    second = run(work, env, "dvc", "repro")
    assert second.returncode == 0 and "Running stage" not in second.stdout

    # A pull adds a field file; training on it is switched on: ingest is out of date for both.
    pd.read_parquet(work / "data" / "splits" / "field.parquet").head(3).to_csv(
        work / "data" / "field" / "field-20260101T000000Z-1-3.csv", index=False
    )
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["include_field"] = True
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    status = run(work, env, "dvc", "status", "ingest")
    assert status.returncode == 0, status.stderr
    assert "ingest:" in status.stdout and "modified:" in status.stdout
    assert "data/field" in status.stdout and "data.include_field" in status.stdout
