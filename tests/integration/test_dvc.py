"""`dvc repro` runs the same stages as the flow, and the flow's data hash is DVC's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from registry.lineage import dvc_dir_hash

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_dvc_repro_runs_end_to_end_and_hashes_match(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    for folder in ("flows", "fleet", "edgeloop", "registry"):
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data" / "field", work / "data" / "field")  # a clone has its .gitkeep
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["training"]["epochs"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    dvc = str(Path(sys.executable).parent / "dvc")

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    assert run("git", "init", "-q").returncode == 0
    assert run(dvc, "init", "-q").returncode == 0
    first = run(dvc, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("ingest", "validate", "train", "compress", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    for out in (
        "data/splits/train.parquet",
        ".edgeloop/work/variants/int8-static.onnx",
        ".edgeloop/work/evaluation.json",
    ):
        assert (work / out).is_file(), out
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    splits_out = next(o for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/splits")
    assert splits_out["md5"] == dvc_dir_hash(work / "data" / "splits")
    second = run(dvc, "repro")
    assert second.returncode == 0 and "Running stage" not in second.stdout

    # A pull adds a field file; training on it is switched on: ingest is out of date for both.
    pd.read_parquet(work / "data" / "splits" / "field.parquet").head(3).to_csv(
        work / "data" / "field" / "field-20260101T000000Z-1-3.csv", index=False
    )
    params["data"]["include_field"] = True
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    status = run(dvc, "status", "ingest")
    assert status.returncode == 0, status.stderr
    assert "ingest:" in status.stdout and "modified:" in status.stdout
    assert "data/field" in status.stdout and "data.include_field" in status.stdout
