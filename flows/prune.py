"""Structured pruning: drop the weakest hidden units of an MLP, then fine-tune what is left.

Unstructured pruning (zeroing single weights) leaves an ONNX file the same size, because the weight
matrices stay dense. Removing whole hidden units makes every matrix smaller, so the pruned model is
smaller and faster before int8 quantisation multiplies the gain.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from torch import nn

from edgeloop.core.params import TrainingParams
from flows.models import Classifier
from flows.train import train


class NotPrunable(ValueError):
    """The model's body is not a Sequential of Linear layers with element-wise layers between."""


def _linear_indices(body: nn.Sequential) -> list[int]:
    indices = [i for i, layer in enumerate(body) if isinstance(layer, nn.Linear)]
    allowed = (nn.Linear, nn.ReLU, nn.Dropout, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU)
    if len(indices) < 2 or not all(isinstance(layer, allowed) for layer in body):
        raise NotPrunable("structured pruning needs an MLP: nn.Sequential of Linear layers")
    return indices


def prune_hidden_units(model: Classifier, keep: float) -> Classifier:
    """A copy of ``model`` keeping the ``keep`` share of each hidden layer's units (by L1 norm)."""
    if not isinstance(model.body, nn.Sequential):
        raise NotPrunable("structured pruning needs the model body to be an nn.Sequential")
    pruned = copy.deepcopy(model)
    body = pruned.body
    assert isinstance(body, nn.Sequential)
    linears = _linear_indices(body)
    for here, nxt in itertools.pairwise(linears):
        layer, following = body[here], body[nxt]
        assert isinstance(layer, nn.Linear) and isinstance(following, nn.Linear)
        n_keep = max(1, round(layer.out_features * keep))
        scores = layer.weight.detach().abs().sum(dim=1)
        kept = torch.sort(torch.topk(scores, n_keep).indices).values
        smaller = nn.Linear(layer.in_features, n_keep, bias=layer.bias is not None)
        with torch.no_grad():
            smaller.weight.copy_(layer.weight[kept])
            if layer.bias is not None:
                smaller.bias.copy_(layer.bias[kept])
        narrowed = nn.Linear(n_keep, following.out_features, bias=following.bias is not None)
        with torch.no_grad():
            narrowed.weight.copy_(following.weight[:, kept])
            if following.bias is not None:
                narrowed.bias.copy_(following.bias)
        body[here], body[nxt] = smaller, narrowed
    return pruned


def prune_and_finetune(
    model: Classifier,
    keep: float,
    epochs: int,
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    training: TrainingParams,
    seed: int,
) -> Classifier:
    pruned = prune_hidden_units(model, keep)
    if epochs:
        train(pruned, train_xy, val_xy, training.model_copy(update={"epochs": epochs}), seed)
    return pruned.eval()
