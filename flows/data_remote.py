"""Training data through a DVC remote the platform configures, so a training worker reads none of
the build host's files.

The remote is ``EDGELOOP_DVC_REMOTE`` (``Settings.data_remote``): by default a directory under the
platform's home (``.edgeloop/dvc-remote``), or ``s3://bucket/prefix`` on an S3-compatible server
(``EDGELOOP_DVC_REMOTE_ENDPOINT_URL``; the usual AWS credentials on both sides, and DVC's S3
plugin ``dvc-s3``, which the ``platform`` extra installs). The project's DVC repository knows it as the remote ``edgeloop``, written to
``.dvc/config.local`` (this machine's, never committed).

The driver (:func:`share_field_data`) pushes the DVC-tracked files the job trains on (the pulled
field samples, ``data/field/*.csv`` with their ``.dvc`` pointers, when ``data.include_field``) and
sends the pointers with the flow run. The worker (:func:`fetch_field_data`) makes a DVC repository
of its own in its work folder, writes the pointers there and ``dvc pull``s the files from the
remote: the same bytes, by their hashes. The base dataset comes from its loader (scikit-learn's
bundled digits by default), which the worker's own install holds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeloop.core.errors import ConfigError, DataCheckError, EdgeloopError
from edgeloop.core.params import Params
from edgeloop.core.settings import Settings

REMOTE = "edgeloop"
POINTER = re.compile(r"^field-\d{8}T\d{6}Z-\d+-\d+\.csv\.dvc$")  # flows.field_data's files


class DataRemoteError(EdgeloopError):
    """DVC could not push the training data to the remote, or pull it from there."""


def _dvc(args: list[str], cwd: Path) -> None:
    found = Path(sys.executable).parent / "dvc"
    command = [str(found) if found.exists() else "dvc", *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        result = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
    except FileNotFoundError as exc:
        raise DataRemoteError(
            "dvc is not installed", hint="pip install 'edgeloop[platform]'"
        ) from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise DataRemoteError(
            f"dvc {' '.join(args[:2])} in {cwd} failed: {lines[-1] if lines else result.returncode}",
            hint="check EDGELOOP_DVC_REMOTE and that this host can reach it",
        )


def _use_remote(url: str, endpoint_url: str | None, repo: Path, *, local: bool) -> None:
    """Point ``repo``'s remote ``edgeloop`` at ``url`` (``.dvc/config.local`` when ``local``)."""
    if url.startswith("s3://"):
        try:
            import dvc_s3  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"the DVC remote {url} needs DVC's S3 plugin", hint="pip install dvc-s3"
            ) from exc
    elif "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    scope = ["--local"] if local else []
    _dvc(["remote", "add", *scope, "--force", REMOTE, url], repo)
    if endpoint_url:
        _dvc(["remote", "modify", *scope, REMOTE, "endpointurl", endpoint_url], repo)


def share_field_data(settings: Settings, params: Params) -> dict[str, Any] | None:
    """Push the field samples the job trains on to the remote; return what a worker needs to pull
    them (the remote and each file's DVC pointer), or None when the job uses none."""
    if not params.data.include_field:
        return None
    field_dir = Path(params.data.field_dir)
    untracked = sorted(
        p.name for p in field_dir.glob("field-*.csv") if not Path(f"{p}.dvc").is_file()
    )
    if untracked:
        raise DataCheckError(
            f"{field_dir}: {untracked[:5]} are not tracked by DVC, so no worker can get them",
            hint="pull with `edgeloop fleet pull-field-data` (it runs `dvc add`), or `dvc add` them",
        )
    pointers = sorted(field_dir.glob("field-*.csv.dvc"))
    url = settings.data_remote
    if pointers:
        _use_remote(url, settings.dvc_remote_endpoint_url, field_dir, local=True)
        _dvc(["push", "--quiet", "--remote", REMOTE, *[p.name for p in pointers]], field_dir)
    return {
        "remote": url,
        "endpoint_url": settings.dvc_remote_endpoint_url,
        "pointers": {p.name: p.read_text() for p in pointers},
    }


def fetch_field_data(shared: dict[str, Any], folder: Path) -> Path:
    """``dvc pull`` the files of :func:`share_field_data` into ``folder`` (a DVC repository of its
    own); returns the folder, to use as ``data.field_dir``."""
    pointers: dict[str, str] = shared["pointers"]
    bad = [name for name in pointers if not POINTER.match(name)]
    if bad:
        raise DataRemoteError(f"not a field-data pointer: {bad[:5]}")
    folder.mkdir(parents=True, exist_ok=True)
    if not pointers:
        return folder
    if not (folder / ".dvc").is_dir():
        _dvc(["init", "--no-scm", "--quiet"], folder)
    _use_remote(shared["remote"], shared.get("endpoint_url"), folder, local=False)
    for name, text in pointers.items():
        (folder / name).write_text(text)
    _dvc(["pull", "--quiet", "--remote", REMOTE, *sorted(pointers)], folder)
    return folder
