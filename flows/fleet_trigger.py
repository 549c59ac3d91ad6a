"""A retrain the fleet asked for: from an alert to the field data that trains the next version.

An alert's ``open_retrain`` playbook action starts the ``scheduled-retrain`` deployment with the
alert itself as the parameter ``alert`` (``fleet.shared.admin_protocol.Alert``; never a path of the
controller's disk). That run, wherever its worker is, asks the controller for the field samples
behind it (:func:`pull_for_alert`: every labelled sample of the model stored since the last pull, the
alert's among them), records them as a new DVC-tracked version of ``data.field_dir``, and trains
with ``data.include_field`` on. The version it registers carries the chain (:func:`lineage`) as tags
and in its model card's lineage: which alert, and which version of the field data.

Samples without a label are not trained on; the run says how many there were.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from edgeloop.core import fleet_address
from edgeloop.core.params import Params
from edgeloop.core.settings import Settings
from fleet.shared.admin_protocol import Alert
from flows.datasets import LABEL
from flows.field_data import pull, require_schema
from registry import tags as tag


class PulledFieldData(BaseModel):
    """What one pull for an alert brought, and the version of the field data the run trains on."""

    model_config = ConfigDict(frozen=True)

    new_file: str | None
    """The file this pull wrote (None: nothing new and labelled)."""
    labelled: int
    unlabelled: int
    """Samples of the model stored since the last pull without a label: not trained on."""
    files: int
    """Pulled files in the folder, this one included: the training data's field part."""
    version: str
    """A digest of every pulled file's DVC hash (``<file>.dvc``): the field data's version."""

    def describe(self) -> str:
        got = (
            f"{self.labelled} new labelled field sample(s) in {self.new_file}"
            if self.new_file
            else "no new labelled field sample"
        )
        unlabelled = (
            f"; {self.unlabelled} without a label, not trained on" if self.unlabelled else ""
        )
        return f"{got}{unlabelled}; field data {self.version} ({self.files} file(s))"


def field_data_version(field_dir: Path) -> tuple[str, int]:
    """A digest over the DVC pointers of the pulled files (name and md5), and their count."""
    digest = hashlib.sha256()
    pointers = sorted(field_dir.glob("field-*.csv.dvc"))
    for pointer in pointers:
        digest.update(pointer.name.encode())
        digest.update(pointer.read_bytes())
    return (f"fd-{digest.hexdigest()[:16]}" if pointers else "none"), len(pointers)


def field_dir(settings: Settings, params: Params) -> Path:
    """``data.field_dir`` where the project is: relative to the params file's folder, not to the
    working directory (a served flow run works in the source checkout)."""
    folder = Path(params.data.field_dir)
    return folder if folder.is_absolute() else settings.params_file.resolve().parent / folder


def pull_for_alert(settings: Settings, params: Params) -> PulledFieldData:
    """Pull the model's labelled field samples stored since the last pull (DVC-tracked); raises
    ``FieldDataError`` when the controller cannot be asked."""
    address = fleet_address.resolve(settings, None)
    folder = field_dir(settings, params)
    result = pull(
        address.url,
        fleet_address.admin_token(settings, address),
        model=params.model_name,
        schema=require_schema(settings.splits_dir),
        field_dir=folder,
    )
    version, files = field_data_version(folder)
    return PulledFieldData(
        new_file=result.path.name if result.path else None,
        labelled=result.samples,
        unlabelled=result.unlabelled,
        files=files,
        version=version,
    )


def pulled_rows(
    settings: Settings, params: Params, pulled: PulledFieldData
) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows this pull brought (features, labels), or None when it brought none."""
    if pulled.new_file is None:
        return None
    schema = require_schema(settings.splits_dir)
    frame = pd.read_csv(field_dir(settings, params) / pulled.new_file)
    features = frame[list(schema.feature_names)].to_numpy(dtype=np.float32)
    return features, frame[LABEL].to_numpy()


def with_field_data(params: Params, folder: Path | None = None) -> Params:
    """``params`` with ``data.include_field`` on (the pulled samples join the train split), and
    ``data.field_dir`` set to ``folder`` when given."""
    data: dict[str, object] = {"include_field": True}
    if folder is not None:
        data["field_dir"] = str(folder)
    return params.model_copy(update={"data": params.data.model_copy(update=data)})


def lineage(alert: Alert, pulled: PulledFieldData) -> dict[str, str]:
    """The version's tags (and card lineage) naming the alert and the field data behind it."""
    return {
        tag.TRIGGER_ALERT: json.dumps(
            {
                "id": alert.id,
                "kind": alert.kind,
                "scope": alert.scope,
                "reason": alert.reason[:500],
            },
            sort_keys=True,
        ),
        tag.FIELD_DATA_VERSION: pulled.version,
        tag.FIELD_DATA_PULLED: pulled.describe()[:1000],
    }
