"""Field data back to training against a real controller (uvicorn) and real DVC in a temp git repo:
a device's labelled field samples are pulled by `edgeloop fleet pull-field-data` into data/field as a
new DVC-tracked version, and the data hash the next scheduled retrain computes changes with them.
Each bad input of the pull: one clear message, exit 1, nothing written."""

from __future__ import annotations

import hashlib
import os
import re
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
from builders import write_model
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import register, target_all
from servers import uvicorn_controller, write_public_key
from test_simulate_controller import ADMIN, ADMIN_HEADERS, controller  # the real controller

from edgeloop.core.params import load_params
from edgeloop.core.settings import Settings
from fleet.simulate import Simulation
from flows.datasets import LABEL, read_splits, xy
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


def dvc_tracked(path: Path) -> bool:
    """Whether ``path`` has its own ``.dvc`` file recording exactly its bytes."""
    record = path.with_name(path.name + ".dvc")
    if not record.is_file():
        return False
    md5 = yaml.safe_load(record.read_text())["outs"][0]["md5"]
    return bool(md5 == hashlib.md5(path.read_bytes()).hexdigest())


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
    assert dvc_tracked(written)

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
    send(base, auth, novel[:5] + 100, [4] * 5)
    second = cli(repo, "fleet", "pull-field-data", "--url", base)
    assert second.returncode == 0 and "wrote 5 labelled field samples" in second.stdout
    assert len(field_files(repo)) == 2 and all(dvc_tracked(p) for p in field_files(repo))
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


def test_simulated_devices_send_labelled_field_samples_that_a_pull_writes_to_csv(
    repo: Path, tmp_path: Path
) -> None:
    """Devices label some of what they score (the field split's labels, at the feedback rate) and
    post it with their telemetry; a pull writes exactly those rows, with their labels."""
    key = Ed25519PrivateKey.generate()
    schema, splits = read_splits(repo / "data" / "splits")
    field_x, field_y = xy(splits["field"])
    weights = np.random.default_rng(0).normal(size=(64, 10))
    server = tmp_path / "controller"
    server.mkdir()
    with uvicorn_controller(server, write_public_key(key, server / "k.pem")) as (base, db_url):
        with httpx.Client(base_url=base, timeout=30) as client:
            model = write_model(server / "v1.onnx", weights)
            register(client, key, "1", "host-cpu", model, model=MODEL)
        sim = Simulation(
            base,
            ADMIN,
            devices=3,
            classes={"host-cpu": 1.0},
            field_x=field_x,
            field_y=field_y,
            feedback_rate=0.5,
            report_interval_s=0.2,
            rows_per_report=10,
            retry_s=0.2,
            seed=5,
        )
        try:
            devices = sim.result.devices
            sim.run_sync(until=lambda: all(d.enrolled for d in devices.values()), timeout_s=20)
            target_all(db_url, list(devices), "1", model=MODEL)
            sim.run_sync(
                until=lambda: all(d.field_samples_sent >= 10 for d in devices.values()),
                timeout_s=30,
            )
        finally:
            sim.close()
        sent = sum(d.field_samples_sent for d in devices.values())
        # a post the stop cut off may have reached the controller without its answer reaching
        # the device: those samples are still in the device's outbox, and stored once
        in_flight = sum(d.field_samples_pending for d in devices.values())
        assert all(d.field_samples_sent >= 10 for d in devices.values()), devices
        pulled = cli(repo, "fleet", "pull-field-data", "--url", base)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    written_count = re.search(r"wrote (\d+) labelled field samples", pulled.stdout)
    assert written_count, pulled.stdout
    assert sent <= int(written_count[1]) <= sent + in_flight, (sent, in_flight, pulled.stdout)
    [written] = field_files(repo)
    assert dvc_tracked(written)
    frame = pd.read_csv(written)
    assert list(frame.columns) == [*schema.feature_names, LABEL]
    assert len(frame) == int(written_count[1])
    known = {(*row, label) for row, label in zip(field_x.tolist(), field_y.tolist(), strict=True)}
    rows = {tuple(r) for r in frame.astype(float).itertuples(index=False)}
    assert rows <= {tuple(float(v) for v in k) for k in known}  # field rows, with their labels
