"""flows.data_remote with the real DVC: the driver pushes the DVC-tracked field data to the
platform's remote (a directory by default), a worker with a folder of its own pulls the same bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop.core.errors import DataCheckError
from edgeloop.core.params import Params
from edgeloop.core.settings import Settings
from flows.data_remote import DataRemoteError, fetch_field_data, share_field_data
from flows.field_data import track

DVC = str(Path(sys.executable).with_name("dvc"))
CSV = "field-20260101T000000Z-1-2.csv"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git and DVC repository with one pulled field-data file tracked by `dvc add`."""
    root = tmp_path / "project"
    (root / "data" / "field").mkdir(parents=True)
    for command in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=120)
    path = root / "data" / "field" / CSV
    path.write_text("a,b,label\n1.0,2.0,3\n4.0,5.0,6\n")
    track(path)
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    return root


def field_params(**data: object) -> Params:
    return Params.model_validate({"data": {"include_field": True, **data}})


def test_a_worker_pulls_the_field_data_the_driver_pushed(project: Path, tmp_path: Path) -> None:
    settings = Settings(home=project / ".edgeloop")

    shared = share_field_data(settings, field_params())

    assert shared is not None
    assert shared["remote"] == str((project / ".edgeloop" / "dvc-remote").resolve())
    assert list(shared["pointers"]) == [f"{CSV}.dvc"]
    assert "config.local" in {p.name for p in (project / ".dvc").iterdir()}  # not committed
    worker = tmp_path / "worker" / "field"
    got = fetch_field_data(shared, worker)
    assert got == worker
    assert (worker / CSV).read_text() == (project / "data" / "field" / CSV).read_text()
    fetch_field_data(shared, worker)  # a retry in the same folder pulls again


def test_no_field_data_shares_nothing(project: Path) -> None:
    settings = Settings(home=project / ".edgeloop")
    assert share_field_data(settings, Params()) is None


def test_a_file_dvc_does_not_track_is_refused(project: Path) -> None:
    (project / "data" / "field" / "field-20260102T000000Z-3-3.csv").write_text("a,b,label\n")
    with pytest.raises(DataCheckError, match="not tracked by DVC"):
        share_field_data(Settings(home=project / ".edgeloop"), field_params())


def test_a_pointer_of_another_name_is_never_written(tmp_path: Path) -> None:
    shared = {"remote": str(tmp_path / "r"), "pointers": {"../escape.dvc": "outs: []\n"}}
    with pytest.raises(DataRemoteError, match="not a field-data pointer"):
        fetch_field_data(shared, tmp_path / "field")
    assert not (tmp_path / "escape.dvc").exists()


def test_a_worker_pulls_from_an_s3_compatible_remote(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote in a bucket of a real S3-speaking server (moto's standalone server, from the dev
    extra; see tests/s3_server.py), through DVC's S3 plugin on both sides, the credentials in the
    standard AWS variables as an operator hands them over."""
    from s3_server import CREDENTIALS, moto_s3

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with moto_s3(tmp_path) as s3:
        settings = Settings(
            home=project / ".edgeloop",
            dvc_remote=f"s3://{s3.bucket}/training-data",
            dvc_remote_endpoint_url=s3.endpoint_url,
        )
        shared = share_field_data(settings, field_params())
        assert shared is not None and shared["remote"] == f"s3://{s3.bucket}/training-data"
        stored = s3.keys()
        assert stored and all(k.startswith("training-data/") for k in stored), stored
        assert not (project / ".edgeloop" / "dvc-remote").exists()  # nothing on the local disk
        worker = tmp_path / "worker" / "field"
        fetch_field_data(shared, worker)
        assert (worker / CSV).read_text() == (project / "data" / "field" / CSV).read_text()

        s3.stop()  # the remote unreachable: one clear error, no half-written file
        elsewhere = tmp_path / "another-worker" / "field"
        with pytest.raises(DataRemoteError, match="dvc pull"):
            fetch_field_data(shared, elsewhere)
        assert not (elsewhere / CSV).exists()
