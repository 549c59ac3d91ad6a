"""flows.compress.quantise: every int8 variant carries the model's contract, and a variant the
quantiser cannot build is reported, not fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import image_classifier

from fleet.shared.modelspec import OutputKind, read_spec
from fleet.shared.runtime import open_session, predict
from flows import compress
from flows.datasets import sklearn_digits
from flows.onnxfile import check_model_file


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    source = tmp_path / "cnn.onnx"
    source.write_bytes(image_classifier().SerializeToString())
    ready = tmp_path / "ready.onnx"
    check_model_file(source, sklearn_digits().schema, dest=ready)
    return ready


def test_the_int8_variants_carry_the_contract_and_are_calibrated_by_name(
    cnn: Path, tmp_path: Path
) -> None:
    rows = sklearn_digits().features[:64]
    built, skipped = compress.quantise(cnn, tmp_path / "v", rows, read_spec(open_session(str(cnn))))
    assert skipped == {} and set(built) == {"fp32", "int8-dynamic", "int8-static"}
    for path in built.values():
        session = open_session(str(path))
        spec = read_spec(session)
        assert spec.inputs[0].name == "input" and spec.scored.kind is OutputKind.LOGITS
        assert predict(session, rows[:3]).shape == (3, 10)


def test_a_variant_the_quantiser_refuses_is_reported_and_the_rest_built(
    cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise ValueError("Failed to find proper ai.onnx domain\nmore detail")

    monkeypatch.setattr(compress, "quantize_dynamic", refuse)
    rows = np.asarray(sklearn_digits().features[:64])
    built, skipped = compress.quantise(cnn, tmp_path / "v", rows, read_spec(open_session(str(cnn))))
    assert skipped == {
        "int8-dynamic": "onnxruntime's quantiser failed: Failed to find proper ai.onnx domain"
    }
    assert set(built) == {"fp32", "int8-static"}
    assert not (tmp_path / "v" / "int8-dynamic.onnx").exists()
