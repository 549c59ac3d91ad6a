"""Data checks: a Great Expectations suite over the four splits, run before anything trains.

What it checks, per split: the schema (columns in order, enough rows), every feature value within the
dataset's declared range and never null, labels within the known classes, each class's share within
``[min_class_share, max_class_share]`` of a uniform share, and no row shared with another split
(leakage). A failure raises :class:`DataCheckError` whose report names each failed expectation with
example rows, so nothing downstream (training, registration) ever runs on bad data.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.core.errors import DataCheckError
from edgeloop.core.params import DataParams
from flows.datasets import LABEL, DatasetSchema

EXAMPLES = 5
MIN_REGRESSION_ROWS = 10


@dataclass(frozen=True)
class _View:
    """One table handed to Great Expectations, with the expectations that apply to it."""

    split: str
    view: str
    frame: pd.DataFrame
    expectations: list[Any]
    index_columns: list[str]


def row_hashes(frame: pd.DataFrame, feature_names: tuple[str, ...]) -> pd.Series:
    values = frame[list(feature_names)].to_numpy(dtype=np.float64)
    return pd.Series(
        [hashlib.sha1(row.tobytes()).hexdigest()[:16] for row in values], index=frame.index
    )


def _balance(name: str, table: pd.DataFrame, schema: DatasetSchema, params: DataParams) -> _View:
    """Each class's share of the split against a uniform share, within the configured limits."""
    import great_expectations.expectations as gxe

    uniform = 1.0 / len(schema.classes)
    counts = table[LABEL].value_counts().reindex(list(schema.classes), fill_value=0)
    balance = pd.DataFrame(
        {
            "class": counts.index,
            "count": counts.values,
            "share_of_uniform": counts.values / max(len(table), 1) / uniform,
        }
    )
    return _View(
        name,
        "balance",
        balance,
        [
            gxe.ExpectColumnValuesToBeBetween(
                column="share_of_uniform",
                min_value=params.min_class_share,
                max_value=params.max_class_share,
            )
        ],
        ["class", "count"],
    )


def _views(
    schema: DatasetSchema, splits: dict[str, pd.DataFrame], params: DataParams
) -> list[_View]:
    import great_expectations.expectations as gxe

    low, high = schema.value_range
    features = list(schema.feature_names)
    hashes = {
        name: row_hashes(frame, schema.feature_names)
        if set(features) <= set(frame.columns)
        else None
        for name, frame in splits.items()
    }
    regression = schema.task == "regression"
    views: list[_View] = []
    for name, frame in splits.items():
        table = frame.reset_index(drop=True).rename_axis("row").reset_index()
        if regression:
            assert schema.target_range is not None
            target: list[Any] = [
                gxe.ExpectTableRowCountToBeBetween(min_value=MIN_REGRESSION_ROWS),
                gxe.ExpectColumnValuesToNotBeNull(column=LABEL),
                gxe.ExpectColumnValuesToBeBetween(
                    column=LABEL, min_value=schema.target_range[0], max_value=schema.target_range[1]
                ),
            ]
        else:
            target = [
                gxe.ExpectTableRowCountToBeBetween(min_value=len(schema.classes)),
                gxe.ExpectColumnValuesToNotBeNull(column=LABEL),
                gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=list(schema.classes)),
            ]
        views.append(
            _View(
                name,
                "table",
                table,
                [
                    gxe.ExpectTableColumnsToMatchOrderedList(column_list=["row", *features, LABEL]),
                    *target,
                ],
                ["row"],
            )
        )
        present = [c for c in features if c in table.columns]
        long = table.melt(
            id_vars=["row"], value_vars=present, var_name="feature", value_name="value"
        )
        views.append(
            _View(
                name,
                "values",
                long,
                [
                    gxe.ExpectColumnValuesToNotBeNull(column="value"),
                    gxe.ExpectColumnValuesToBeBetween(
                        column="value", min_value=low, max_value=high
                    ),
                ],
                ["row", "feature"],
            )
        )
        if not regression:
            views.append(_balance(name, table, schema, params))
        own = hashes[name]
        others = {h for other, s in hashes.items() if other != name and s is not None for h in s}
        if own is not None:
            views.append(
                _View(
                    name,
                    "leakage",
                    pd.DataFrame({"row": table["row"], "row_hash": own.values}),
                    [
                        gxe.ExpectColumnValuesToNotBeInSet(
                            column="row_hash", value_set=sorted(others)
                        )
                    ],
                    ["row"],
                )
            )
    return views


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _failure(view: _View, result: Any) -> dict[str, Any]:
    config = result.expectation_config
    details = result.result or {}
    examples = (
        details.get("partial_unexpected_index_list") or details.get("partial_unexpected_list") or []
    )
    if not examples and "observed_value" in details:
        examples = [{"observed_value": details["observed_value"]}]
    if result.exception_info and result.exception_info.get("raised_exception"):
        examples = [{"error": result.exception_info.get("exception_message")}]
    kwargs = {k: v for k, v in config.kwargs.items() if k not in {"batch_id", "value_set"}}
    return {
        "split": view.split,
        "view": view.view,
        "expectation": config.type,
        "kwargs": _plain(kwargs),
        "unexpected_count": details.get("unexpected_count"),
        "examples": _plain(examples[:EXAMPLES]),
    }


def check_splits(
    schema: DatasetSchema, splits: dict[str, pd.DataFrame], params: DataParams
) -> dict[str, Any]:
    """Run the suite; return the report, or raise DataCheckError carrying it when anything failed."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("edgeloop")
    failures: list[dict[str, Any]] = []
    evaluated = 0
    for view in _views(schema, splits, params):
        asset = source.add_dataframe_asset(f"{view.split}-{view.view}")
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": view.frame}
        )
        suite = gx.ExpectationSuite(
            name=f"{schema.name}-{view.split}-{view.view}", expectations=view.expectations
        )
        outcome = batch.validate(
            suite,
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": EXAMPLES,
                "unexpected_index_column_names": view.index_columns,
            },
        )
        evaluated += len(outcome.results)
        failures += [_failure(view, r) for r in outcome.results if not r.success]
    report = {
        "dataset": schema.name,
        "passed": not failures,
        "expectations_evaluated": evaluated,
        "rows": {name: len(frame) for name, frame in splits.items()},
        "failures": failures,
    }
    if failures:
        names = ", ".join(f"{f['split']}:{f['expectation']}" for f in failures[:4])
        more = f" and {len(failures) - 4} more" if len(failures) > 4 else ""
        raise DataCheckError(
            f"data checks failed: {len(failures)} expectation(s) ({names}{more})",
            hint="see the data report for example rows; fix the data and run again",
            report=report,
        )
    return report
