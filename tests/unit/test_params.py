"""edgeloop.core.params: the params.yaml schema and its one-line ConfigErrors."""

from pathlib import Path

import pytest

from edgeloop.core.errors import ConfigError
from edgeloop.core.params import Params, load_params

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_match_documented_values() -> None:
    params = Params()
    assert params.model_name == "digits-classifier"
    assert params.seed == 42
    assert params.data.splits == {"train": 0.6, "val": 0.15, "test": 0.15, "field": 0.10}
    assert params.training.epochs == 30
    assert params.compress.max_accuracy_drop == 0.01
    assert params.gates.profiles == ["host-cpu", "edge-small"]
    # Round trip through the validator gives the same object.
    assert Params.model_validate(params.model_dump()) == params


def test_shipped_params_file_loads() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.model_name == "digits-classifier"
    assert params.training.builder == "mlp"
    assert params.training.builder_args == {"hidden": [512, 512], "dropout": 0.1}
    assert sum(params.data.splits.values()) == pytest.approx(1.0)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "")) == Params()


def test_partial_file_overrides_only_named_keys(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "seed: 7\ntraining: {epochs: 3}\n"))
    assert params.seed == 7
    assert params.training.epochs == 3
    assert params.training.batch_size == 64


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 42\ndata:\n  splits: {train: 0.6, val: 0.15\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert "is not valid YAML at line 4, column 1" in info.value.message
    assert str(path) in info.value.message
    assert info.value.hint == "fix the syntax and run again"


def test_tab_indentation_error_points_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"at line 2, column 1"):
        load_params(write(tmp_path, "seed: 1\n\tfoo: 2\n"))


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, "training: {epochs: 3, epocs: 4}\n"))
    assert "training.epocs: Extra inputs are not permitted" in info.value.message
    # The valid sibling key is not reported.
    assert "training.epochs" not in info.value.message


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"modelname: Extra inputs are not permitted"):
        load_params(write(tmp_path, "modelname: x\n"))


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, "seed: many\ntraining: {epochs: 0}\n"))
    assert "seed:" in info.value.message
    assert "training.epochs:" in info.value.message
    assert "; " in info.value.message


def test_splits_not_summing_to_one(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  splits: {train: 0.6, val: 0.2, test: 0.15, field: 0.10}\n")
    with pytest.raises(ConfigError, match=r"data\.splits fractions must sum to 1"):
        load_params(path)


def test_splits_must_name_all_four(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  splits: {train: 0.6, val: 0.15, test: 0.25}\n")
    with pytest.raises(ConfigError, match=r"must name exactly \['field', 'test', 'train', 'val'\]"):
        load_params(path)


def test_splits_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  splits: {train: 1.2, val: -0.35, test: 0.05, field: 0.10}\n")
    with pytest.raises(ConfigError, match="fractions must be positive"):
        load_params(path)


def test_non_mapping_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping of settings"):
        load_params(write(tmp_path, "- a\n- b\n"))


def test_bad_model_name_pattern(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_name: String should match pattern"):
        load_params(write(tmp_path, "model_name: '-bad'\n"))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.message == f"params file {path} not found"
    assert "EDGELOOP_PARAMS_FILE" in info.value.hint
    assert str(info.value) == f"{info.value.message} ({info.value.hint})"


def test_params_are_frozen() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Params().seed = 1  # type: ignore[misc]


def test_digest_is_stable_and_independent_of_key_order(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("seed: 3\ntraining: {epochs: 5, batch_size: 32}\n")
    b.write_text("training: {batch_size: 32, epochs: 5}\nseed: 3\n")
    digest = load_params(a).digest()
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == load_params(b).digest()
    assert digest == load_params(a).digest()
    assert Params().digest() == Params().digest()


def test_digest_ignores_key_order_inside_free_form_args() -> None:
    a = Params.model_validate({"data": {"loader_args": {"a": 1, "b": 2}}})
    b = Params.model_validate({"data": {"loader_args": {"b": 2, "a": 1}}})
    assert a.digest() == b.digest()


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"model_name": "other"},
        {"training": {"epochs": 31}},
        {"data": {"loader_args": {"x": 1}}},
        {"compress": {"max_accuracy_drop": 0.02}},
        {"card": {"limitations": []}},
    ],
)
def test_digest_changes_when_a_param_changes(change: dict) -> None:
    assert Params.model_validate(change).digest() != Params().digest()
