"""Field data back to training against a real controller (uvicorn) and real DVC in a temp git repo:
a device's labelled field samples are pulled by `edgeloop fleet pull-field-data` into data/field as a
new DVC-tracked version, and the data hash the next scheduled retrain computes changes with them.
Each bad input of the pull: one clear message, exit 1, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from test_simulate_controller import ADMIN, ADMIN_HEADERS, controller  # the real controller

from edgeloop.params import load_params
from edgeloop.settings import Settings
from flows.datasets import read_splits
from flows.stages import ingest
from flows.workspace import Workspace
from registry.lineage import dvc_dir_hash

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "digits-classifier"
__all__ = ["controller"]


def cli(repo: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(REPO))
    env.update({"EDGELOOP_FLEET_ADMIN_TOKEN": ADMIN, **env_extra})
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC project whose params train on pulled field data; splits ingested once."""
    root = tmp_path / "repo"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model_name"] = MODEL
    params["data"]["include_field"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = str(Path(sys.executable).parent / "dvc")
    for command in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    monkeypatch.chdir(root)  # data.field_dir and the settings are relative to the project
    ingest(load_params(root / "params.yaml"), workspace(root))
    return root


def workspace(root: Path) -> Workspace:
    return Workspace(root / "data" / "splits", root / ".edgeloop" / "work")


def retrain_data_hash(root: Path) -> str:
    """What the next scheduled retrain compares with the last version's ``edgeloop.data.hash``."""
    from flows.scheduled import current_data_hash

    settings = Settings(home=root / ".edgeloop", params_file=root / "params.yaml")
    return current_data_hash(load_params(root / "params.yaml"), settings)


def device(base: str) -> dict[str, str]:
    with httpx.Client(base_url=base, timeout=30) as client:
        token = client.post("/v1/enrolment-tokens", json={}, headers=ADMIN_HEADERS).json()
        r = client.post(
            "/v1/enrol",
            json={"token": token["token"], "device_id": "dev-1", "hardware_class": "host-cpu"},
        )
        assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['credential']}"}


def send(
    base: str, auth: dict[str, str], rows: np.ndarray, labels: list[Any], **extra: Any
) -> None:
    samples = [
        {"model": MODEL, "version": "1", "features": [float(v) for v in row], "predicted": 0,
         "label": None if label is None else int(label), **extra}
        for row, label in zip(rows, labels, strict=True)
    ]  # fmt: skip
    r = httpx.post(
        f"{base}/v1/devices/dev-1/field-samples", json={"samples": samples}, headers=auth
    )
    assert r.status_code == 200, r.text


def field_files(root: Path) -> list[Path]:
    return sorted((root / "data" / "field").glob("field-*.csv"))


def dvc_recorded_hash(root: Path) -> str:
    return str(yaml.safe_load((root / "data" / "field.dvc").read_text())["outs"][0]["md5"])


def test_pulled_field_samples_are_a_new_dvc_version_and_change_the_retrain_data_hash(
    controller: dict[str, Any], repo: Path
) -> None:
    base = controller["base"]
    _, splits = read_splits(repo / "data" / "splits")
    before = retrain_data_hash(repo)
    assert before == dvc_dir_hash(repo / "data" / "splits")
    auth = device(base)
    held_out = splits["field"].drop(columns=["label"]).to_numpy()[:30]
    novel = np.random.default_rng(0).integers(0, 17, size=(20, 64))
    send(base, auth, held_out, list(splits["field"]["label"][:30]))
    send(base, auth, novel, [3] * 20, drifted=True)
    send(base, auth, novel[:2], [None, None], drifted=True)  # unlabelled: not for training
    wrong_model = {"model": "other-model"}
    send(base, auth, novel[:3], [1, 1, 1], **wrong_model)

    first = cli(repo, "fleet", "pull-field-data", "--url", base)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "wrote 50 labelled field samples" in first.stdout
    [written] = field_files(repo)
    assert len(pd.read_csv(written)) == 50
    assert dvc_recorded_hash(repo) == dvc_dir_hash(repo / "data" / "field")  # tracked by DVC

    after = retrain_data_hash(repo)
    assert after != before
    ingest(load_params(repo / "params.yaml"), workspace(repo))
    _, merged = read_splits(repo / "data" / "splits")
    assert len(merged["train"]) == len(splits["train"]) + 50
    assert len(merged["field"]) == len(splits["field"]) - 30  # held-out rows moved, not copied
    assert dvc_dir_hash(repo / "data" / "splits") == after

    again = cli(repo, "fleet", "pull-field-data", "--url", base)
    assert again.returncode == 0 and "no new labelled field samples" in again.stdout
    assert len(field_files(repo)) == 1
    first_version = dvc_recorded_hash(repo)
    send(base, auth, novel[:5] + 100, [4] * 5)
    second = cli(repo, "fleet", "pull-field-data", "--url", base)
    assert second.returncode == 0 and "wrote 5 labelled field samples" in second.stdout
    assert len(field_files(repo)) == 2 and dvc_recorded_hash(repo) != first_version
    assert retrain_data_hash(repo) != after


def test_pull_with_a_wrong_admin_token_writes_nothing(
    controller: dict[str, Any], repo: Path
) -> None:
    r = cli(repo, "fleet", "pull-field-data", "--url", controller["base"],
            EDGELOOP_FLEET_ADMIN_TOKEN="wrong")  # fmt: skip
    assert r.returncode == 1 and "refused the admin token" in r.stderr
    assert not (repo / "data" / "field").exists()


def test_pull_outside_a_dvc_repository_leaves_no_file(
    controller: dict[str, Any], repo: Path
) -> None:
    shutil.rmtree(repo / ".dvc")
    send(controller["base"], device(controller["base"]), np.ones((2, 64)), [1, 2])
    r = cli(repo, "fleet", "pull-field-data", "--url", controller["base"])
    assert r.returncode == 1 and "dvc add" in r.stderr and "dvc init" in r.stderr
    assert field_files(repo) == []


def test_pull_from_an_unreachable_controller(repo: Path) -> None:
    r = cli(repo, "fleet", "pull-field-data", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "unreachable" in r.stderr


def test_pull_without_an_admin_token(repo: Path) -> None:
    r = cli(repo, "fleet", "pull-field-data", EDGELOOP_FLEET_ADMIN_TOKEN="")
    assert r.returncode == 1 and "EDGELOOP_FLEET_ADMIN_TOKEN" in r.stderr


def test_pull_before_any_ingest(repo: Path) -> None:
    shutil.rmtree(repo / "data" / "splits")
    r = cli(repo, "fleet", "pull-field-data", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "schema.json" in r.stderr and "edgeloop run" in r.stderr
