"""Structured pruning keeps the strongest hidden units and a working, smaller MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flows.models import Classifier, mlp
from flows.prune import NotPrunable, prune_hidden_units


def test_pruning_halves_hidden_layers_and_keeps_the_strongest_units() -> None:
    torch.manual_seed(0)
    model = Classifier(mlp(8, 3, hidden=(6, 4), dropout=0.0), 0.0, 1.0)
    first = model.body[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight.mul_(0.01)
        first.weight[[1, 4, 5]] *= 1000  # the three strongest units of the first hidden layer
    pruned = prune_hidden_units(model, keep=0.5)
    linears = [m for m in pruned.body if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 3), (3, 2), (2, 3)]
    assert torch.equal(linears[0].weight, first.weight[[1, 4, 5]])
    assert pruned(torch.zeros(5, 8)).shape == (5, 3)
    assert [m.out_features for m in model.body if isinstance(m, nn.Linear)] == [6, 4, 3]


def test_pruned_model_matches_the_original_when_dropped_units_were_dead() -> None:
    torch.manual_seed(1)
    model = Classifier(mlp(4, 2, hidden=(4,), dropout=0.0), 0.0, 1.0).eval()
    first = model.body[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight[2:] = 0
        first.bias[2:] = 0  # units 2 and 3 output relu(0) = 0: removing them changes nothing
    x = torch.rand(16, 4)
    assert torch.allclose(prune_hidden_units(model, keep=0.5)(x), model(x), atol=1e-6)


def test_a_non_mlp_body_is_not_prunable() -> None:
    model = Classifier(nn.Sequential(nn.Conv1d(1, 1, 3)), 0.0, 1.0)
    with pytest.raises(NotPrunable):
        prune_hidden_units(model, keep=0.5)
