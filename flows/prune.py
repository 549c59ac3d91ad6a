"""Structured pruning: drop the weakest hidden units of an MLP, or the weakest channels of a conv net,
then fine-tune what is left.

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
    """The model's body is neither an MLP nor a plain conv net (see :func:`prune_hidden_units`)."""


_ELEMENTWISE = (nn.ReLU, nn.Dropout, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU)
_CONV_NET = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear, *_ELEMENTWISE)


def _strongest(weight: torch.Tensor, keep: float) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` share of output units with the largest L1 norm."""
    n_keep = max(1, round(weight.shape[0] * keep))
    scores = weight.detach().abs().reshape(weight.shape[0], -1).sum(dim=1)
    return torch.sort(torch.topk(scores, n_keep).indices).values


def _narrow_linear_outputs(layer: nn.Linear, kept: torch.Tensor) -> nn.Linear:
    out = nn.Linear(layer.in_features, len(kept), bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.weight[kept])
        if layer.bias is not None:
            out.bias.copy_(layer.bias[kept])
    return out


def _narrow_linear_inputs(layer: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    out = nn.Linear(len(columns), layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.weight[:, columns])
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out


def _narrow_conv(
    layer: nn.Conv2d, outputs: torch.Tensor | None, inputs: torch.Tensor | None
) -> nn.Conv2d:
    weight = layer.weight
    if outputs is not None:
        weight = weight[outputs]
    if inputs is not None:
        weight = weight[:, inputs]
    out = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        dilation=layer.dilation,  # type: ignore[arg-type]
        bias=layer.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(weight)
        if layer.bias is not None and out.bias is not None:
            out.bias.copy_(layer.bias if outputs is None else layer.bias[outputs])
    return out


def _prune_mlp(body: nn.Sequential, keep: float) -> None:
    linears = [i for i, layer in enumerate(body) if isinstance(layer, nn.Linear)]
    for here, nxt in itertools.pairwise(linears):
        layer, following = body[here], body[nxt]
        assert isinstance(layer, nn.Linear) and isinstance(following, nn.Linear)
        kept = _strongest(layer.weight, keep)
        body[here] = _narrow_linear_outputs(layer, kept)
        body[nxt] = _narrow_linear_inputs(following, kept)


def _prune_conv_channels(body: nn.Sequential, keep: float) -> None:
    """Keep the strongest output channels of every convolution; the next convolution loses the
    matching input channels, and the first linear layer after the flatten the matching columns
    (a channel's block of positions in the flattened feature map)."""
    convs = [i for i, layer in enumerate(body) if isinstance(layer, nn.Conv2d)]
    for n, here in enumerate(convs):
        layer = body[here]
        assert isinstance(layer, nn.Conv2d)
        kept = _strongest(layer.weight, keep)
        body[here] = _narrow_conv(layer, kept, None)
        if n + 1 < len(convs):
            nxt = body[convs[n + 1]]
            assert isinstance(nxt, nn.Conv2d)
            body[convs[n + 1]] = _narrow_conv(nxt, None, kept)
            continue
        after = next(i for i in range(here + 1, len(body)) if isinstance(body[i], nn.Linear))
        linear = body[after]
        assert isinstance(linear, nn.Linear)
        per_channel = linear.in_features // layer.out_channels
        columns = (kept[:, None] * per_channel + torch.arange(per_channel)[None, :]).reshape(-1)
        body[after] = _narrow_linear_inputs(linear, columns)


def prune_hidden_units(model: Classifier, keep: float) -> Classifier:
    """A copy of ``model`` keeping the ``keep`` share of each hidden unit (by L1 norm): the hidden
    units of an MLP (``nn.Sequential`` of Linear layers with element-wise layers between), or the
    channels of a plain conv net (Conv2d, pooling and element-wise layers, a Flatten, then Linear
    layers, whose hidden units are pruned as an MLP's). Raises :class:`NotPrunable` otherwise."""
    if not isinstance(model.body, nn.Sequential):
        raise NotPrunable("structured pruning needs the model body to be an nn.Sequential")
    layers = list(model.body)
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    if convs:
        flatten = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten)]
        if not all(isinstance(layer, _CONV_NET) for layer in layers) or len(flatten) != 1:
            raise NotPrunable(
                "channel pruning needs a plain conv net: Conv2d, pooling and element-wise layers, "
                "one Flatten, then Linear layers"
            )
        if any(isinstance(layer, nn.Conv2d) for layer in layers[flatten[0] :]) or any(
            isinstance(layer, nn.Linear) for layer in layers[: flatten[0]]
        ):
            raise NotPrunable("channel pruning needs every Conv2d before the Flatten")
        if any(c.groups != 1 for c in convs):
            raise NotPrunable("channel pruning does not handle grouped convolutions")
    elif len(linears) < 2 or not all(
        isinstance(layer, (nn.Linear, *_ELEMENTWISE)) for layer in layers
    ):
        raise NotPrunable("structured pruning needs an MLP: nn.Sequential of Linear layers")
    pruned = copy.deepcopy(model)
    body = pruned.body
    assert isinstance(body, nn.Sequential)
    if convs:
        _prune_conv_channels(body, keep)
    _prune_mlp(body, keep)
    return pruned


def prune_and_finetune(
    model: Classifier,
    keep: float,
    epochs: int,
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    training: TrainingParams,
    seed: int,
    task: str = "classification",
) -> Classifier:
    pruned = prune_hidden_units(model, keep)
    if epochs:
        finetune = training.model_copy(update={"epochs": epochs})
        train(pruned, train_xy, val_xy, finetune, seed, task)
    return pruned.eval()
