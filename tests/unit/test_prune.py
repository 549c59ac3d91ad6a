"""Structured pruning keeps the strongest hidden units (channels of a conv net) and a working,
smaller model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flows.models import Classifier, cnn, mlp
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


def test_a_conv_net_keeps_its_strongest_channels_and_still_runs() -> None:
    torch.manual_seed(2)
    model = Classifier(cnn(64, 10, input_shape=(1, 8, 8), channels=(4, 6)), 0.0, 16.0, (1, 8, 8))
    second = model.body[2]
    assert isinstance(second, nn.Conv2d)
    with torch.no_grad():
        second.weight.mul_(0.01)
        second.weight[[0, 3, 5]] *= 1000  # the three strongest channels of the second conv
    pruned = prune_hidden_units(model, keep=0.5)
    convs = [m for m in pruned.body if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 2), (2, 3)]
    (linear,) = [m for m in pruned.body if isinstance(m, nn.Linear)]
    assert (linear.in_features, linear.out_features) == (3 * 16, 10)
    assert pruned(torch.zeros(5, 64)).shape == (5, 10)  # flat rows in, as training feeds them


def test_a_pruned_conv_net_matches_when_the_dropped_channels_were_dead() -> None:
    torch.manual_seed(3)
    model = Classifier(cnn(64, 10, input_shape=(1, 8, 8), channels=(4, 4)), 0.0, 16.0, (1, 8, 8))
    model.eval()
    for conv in (model.body[0], model.body[2]):
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        with torch.no_grad():
            conv.weight[2:] = 0
            conv.bias[2:] = -1  # relu(-1) = 0: channels 2 and 3 feed nothing onwards
    x = torch.rand(7, 64) * 16
    pruned = prune_hidden_units(model, keep=0.5)
    assert torch.allclose(pruned(x), model(x), atol=1e-5)


def test_a_conv_net_with_a_layer_pruning_cannot_follow_is_not_prunable() -> None:
    body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(NotPrunable, match="plain conv net"):
        prune_hidden_units(Classifier(body, 0.0, 1.0, (1, 8, 8)), keep=0.5)
