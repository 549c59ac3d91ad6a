"""Field data back to training: labelled samples from the fleet become a new DVC-tracked data version.

``pull`` asks the fleet controller for the labelled field samples stored since the last pull
(``GET /v1/field-samples?since=``), writes them to ``data/field/field-<time>-<first>-<last>.csv`` (the
model's feature columns and ``label``) and records the file with ``dvc add`` (``<file>.dvc`` for git).
The folder itself stays in git (a ``.gitkeep``), so the ingest stage's dependency on it always exists and
``dvc repro`` re-runs ingest when a pull adds a file. The sample ids in the file names are the cursor: a pull resumes
after the highest id already on disk, and never writes a sample twice.

With ``data.include_field: true`` the ingest stage adds these rows to the train split
(``merge_field``): rows equal to a validation or test row are dropped (evaluation stays honest), and rows
equal to a held-out field-split row move from the field split to train (no row is in two splits). The
splits' hash (``edgeloop.data.hash``) then differs, so the next scheduled retrain sees new data.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd

from edgeloop.core.errors import ConfigError, DataCheckError, EdgeloopError
from fleet.shared.admin_protocol import FieldSamplePage, StoredSample
from flows.datasets import LABEL, DatasetSchema

PAGE = 1000
_FILE = re.compile(r"^field-\d{8}T\d{6}Z-(\d+)-(\d+)\.csv$")


class FieldDataError(EdgeloopError):
    """The controller's field samples could not be pulled or recorded."""


@dataclass(frozen=True)
class PullResult:
    path: Path | None
    samples: int
    skipped_other_models: int
    since: int
    last_id: int
    unlabelled: int = 0
    """Samples of the model in the pulled range that carry no label (not written)."""


def last_pulled_id(field_dir: Path) -> int:
    """The highest sample id in the folder's file names (0 for none)."""
    ids = [int(m.group(2)) for p in field_dir.glob("field-*.csv") if (m := _FILE.match(p.name))]
    return max(ids, default=0)


def _pages(client: httpx.Client, since: int) -> list[StoredSample]:
    samples: list[StoredSample] = []
    while True:
        try:
            r = client.get("/v1/field-samples", params={"since": since, "limit": PAGE})
        except httpx.HTTPError as exc:
            raise FieldDataError(
                f"fleet controller unreachable at {client.base_url}: {type(exc).__name__}",
                hint="start it (`edgeloop fleet serve`) or pass --url",
            ) from exc
        if r.status_code == 401:
            raise FieldDataError(
                "the fleet controller refused the admin token",
                hint="set EDGELOOP_FLEET_ADMIN_TOKEN to the controller's admin token",
            )
        if r.status_code != 200:
            raise FieldDataError(f"GET /v1/field-samples answered {r.status_code}: {r.text[:300]}")
        try:
            page = FieldSamplePage.model_validate(r.json())
        except ValueError as exc:  # not JSON, or not a page (pydantic's ValidationError)
            raise FieldDataError(
                f"GET /v1/field-samples answered no page of samples: {exc}"
            ) from exc
        samples.extend(page.samples)
        if len(page.samples) < PAGE:
            return samples
        since = page.next_since


def pull(
    url: str,
    token: str,
    *,
    model: str,
    schema: DatasetSchema,
    field_dir: Path,
    dvc: bool = True,
    transport: httpx.BaseTransport | None = None,
    now: datetime | None = None,
) -> PullResult:
    """Write the labelled samples of ``model`` stored since the last pull; ``dvc add`` the file."""
    since = last_pulled_id(field_dir)
    with httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        transport=transport,
    ) as client:
        fetched = _pages(client, since)
    ours = [s for s in fetched if s.model == model and s.label is not None]
    unlabelled = sum(1 for s in fetched if s.model == model and s.label is None)
    wrong = [s.id for s in ours if len(s.features) != schema.n_features]
    if wrong:
        raise FieldDataError(
            f"field samples {wrong[:10]} of {model} have the wrong number of features "
            f"(the dataset has {schema.n_features})",
            hint="check that the devices run a version trained on this dataset",
        )
    last = fetched[-1].id if fetched else since
    if not ours:
        return PullResult(None, 0, len(fetched) - unlabelled, since, last, unlabelled)
    frame = pd.DataFrame([s.features for s in ours], columns=list(schema.feature_names))
    frame[LABEL] = [s.label for s in ours]
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    field_dir.mkdir(parents=True, exist_ok=True)
    path = field_dir / f"field-{stamp}-{since + 1}-{last}.csv"
    frame.to_csv(path, index=False)
    if dvc:
        try:
            track(path)
        except BaseException:
            path.unlink()  # nothing half-done: the next pull starts from the same id
            raise
    skipped = len(fetched) - len(ours) - unlabelled
    return PullResult(path, len(ours), skipped, since, last, unlabelled)


def track(path: Path) -> None:
    """``dvc add`` one pulled file (its bytes in the DVC cache, ``<file>.dvc`` for git)."""
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc) if dvc.exists() else "dvc", "add", "--quiet", path.name]
    try:
        result = subprocess.run(
            command, cwd=path.parent, capture_output=True, text=True, timeout=300
        )
    except FileNotFoundError as exc:
        raise FieldDataError("dvc is not installed", hint="pip install -e '.[platform]'") from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise FieldDataError(
            f"dvc add {path} failed: {lines[-1] if lines else result.returncode}",
            hint="run it inside a DVC repository (`dvc init` at the project root)",
        )


def read_field_rows(field_dir: Path, schema: DatasetSchema) -> pd.DataFrame:
    """Every pulled file's rows, in file-name order; a file with other columns is refused."""
    expected = [*schema.feature_names, LABEL]
    frames = []
    for path in sorted(field_dir.glob("field-*.csv")):
        frame = pd.read_csv(path)
        if list(frame.columns) != expected:
            raise DataCheckError(
                f"{path}: columns are not the dataset's features and {LABEL!r}",
                hint="delete the file and pull again with `edgeloop fleet pull-field-data`",
            )
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=expected)
    return pd.concat(frames, ignore_index=True)


def merge_field(
    splits: dict[str, pd.DataFrame], field_rows: pd.DataFrame, schema: DatasetSchema
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Add field rows to train: without rows of val/test, and moving held-out field rows to train."""
    features = list(schema.feature_names)
    if field_rows.empty:
        return splits, {"added": 0, "dropped_eval": 0, "moved_from_field": 0}
    field_rows = field_rows.astype(splits["train"].dtypes.to_dict())
    field_rows = field_rows.drop_duplicates(subset=features)

    def keys(frame: pd.DataFrame) -> pd.Series:
        return pd.util.hash_pandas_object(frame[features], index=False)

    incoming = keys(field_rows)
    held_out = set(keys(splits["val"])) | set(keys(splits["test"]))
    train_keys = set(keys(splits["train"]))
    fresh = field_rows[~incoming.isin(held_out | train_keys).to_numpy()]
    dropped_eval = int(incoming.isin(held_out).sum())
    fresh_keys = set(keys(fresh))
    in_field = keys(splits["field"]).isin(fresh_keys).to_numpy()
    out = dict(splits)
    out["train"] = pd.concat([splits["train"], fresh], ignore_index=True)
    out["field"] = splits["field"][~in_field].reset_index(drop=True)
    return out, {
        "added": len(fresh),
        "dropped_eval": dropped_eval,
        "moved_from_field": int(in_field.sum()),
    }


def require_schema(splits_dir: Path) -> DatasetSchema:
    """The dataset schema the splits were written with (pulled rows use its feature names)."""
    path = splits_dir / "schema.json"
    if not path.is_file():
        raise ConfigError(
            f"no {path}: the field samples' columns come from the dataset schema",
            hint="run `edgeloop run` (or `dvc repro ingest`) once first",
        )
    return DatasetSchema.load(path)
