"""flows.plugins.resolve and flows.datasets.load_dataset's check of what a loader returns."""

import json

import pytest

from edgeloop.core.errors import PluginError
from flows.datasets import LOADERS, Dataset, load_dataset, sklearn_digits
from flows.plugins import resolve


def _a() -> str:
    return "a"


def _b() -> str:
    return "b"


BUILTINS = {"beta": _b, "alpha": _a}


def test_builtin_name_resolves() -> None:
    assert resolve("dataset loader", "alpha", BUILTINS) is _a
    assert resolve("dataset loader", "beta", BUILTINS)() == "b"


def test_builtin_loader_table() -> None:
    assert LOADERS["sklearn-digits"] is sklearn_digits


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(PluginError) as info:
        resolve("model builder", "gamma", BUILTINS)
    assert info.value.message == "unknown model builder 'gamma'"
    assert "['alpha', 'beta']" in info.value.hint
    assert "package.module:function" in info.value.hint


def test_module_function_resolves() -> None:
    assert resolve("dataset loader", "json:dumps", BUILTINS) is json.dumps


def test_builtins_win_over_import_path() -> None:
    assert resolve("x", "json:dumps", {"json:dumps": _a}) is _a


def test_bad_module() -> None:
    with pytest.raises(PluginError) as info:
        resolve("dataset loader", "no_such_module_xyz:load", BUILTINS)
    assert "cannot import module 'no_such_module_xyz'" in info.value.message
    assert info.value.message.startswith("dataset loader 'no_such_module_xyz:load'")
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize("attr", ["nope", "__doc__"])
def test_missing_or_non_callable_attribute(attr: str) -> None:
    with pytest.raises(PluginError, match=f"module 'json' has no callable '{attr}'"):
        resolve("model builder", f"json:{attr}", BUILTINS)


@pytest.mark.parametrize("name", [":dumps", ".json:dumps", "json:"])
def test_malformed_module_name_is_a_plugin_error(name: str) -> None:
    with pytest.raises(PluginError):
        resolve("dataset loader", name, BUILTINS)


def test_load_dataset_builtin() -> None:
    dataset = load_dataset("sklearn-digits")
    assert isinstance(dataset, Dataset)
    assert dataset.features.shape == (1797, 64)
    assert dataset.features.dtype.name == "float32"
    assert dataset.labels.dtype.name == "int64"
    assert dataset.schema.n_features == 64
    assert dataset.schema.classes == tuple(range(10))


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(PluginError, match="unknown dataset loader 'mnist'"):
        load_dataset("mnist")


def test_loader_returning_wrong_type() -> None:
    with pytest.raises(PluginError) as info:
        load_dataset("builtins:dict", a=1)
    assert info.value.message == "dataset loader 'builtins:dict' returned dict, not a Dataset"
    assert "flows.datasets.Dataset" in info.value.hint


def test_loader_args_are_passed_through() -> None:
    # The Dataset class itself is a "loader" that builds a Dataset from its keyword arguments.
    digits = sklearn_digits()
    dataset = load_dataset(
        "flows.datasets:Dataset",
        schema=digits.schema,
        features=digits.features[:5],
        labels=digits.labels[:5],
    )
    assert isinstance(dataset, Dataset)
    assert dataset.features.shape == (5, 64)
    assert dataset.labels.tolist() == digits.labels[:5].tolist()
