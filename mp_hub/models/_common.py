"""Pieces shared by the CIFAR-style source models: weight init, the conv-BN-ReLU(-pool) block, the base models'
layer loop and output, and the classification head (Linear on the base model's `pooler_output`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from ..errors import ConfigError

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init

_LOSS_KWARGS = ("num_items_in_batch", "ignore_index")


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def pooled_size(image_size: int, num_pools: int, family: str) -> int:
    """Spatial size after `num_pools` 2×2 max-pools (floor), or a ConfigError if a pool would see less than 2×2."""
    size = image_size
    for _ in range(num_pools):
        if size < 2:
            break
        size //= 2
    else:
        return size
    raise ConfigError(
        f"{family}: image_size={image_size} is too small for {num_pools} 2×2 max-pools; "
        f"use image_size >= {2**num_pools} (resize the images, e.g. 28×28 → 32×32)"
    )


def classifier_layer(in_features: int, num_labels: int) -> nn.Module:
    """The head's Linear(in_features, num_labels), or Identity when num_labels is 0 (features out)."""
    return nn.Linear(in_features, num_labels) if num_labels > 0 else nn.Identity()


def run_layers(
    hidden_state: torch.Tensor,
    layers: Iterable[nn.Module],
    output_hidden_states: bool,
    return_dict: bool,
    *,
    pooler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    first_hidden_states: tuple[torch.Tensor, ...] = (),
) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
    """A base model's body and output: `layers` in turn, `pooler_output` = flatten(pooler(last feature map)).

    The hidden states (when asked for) are `first_hidden_states` followed by each layer's output.
    """
    hidden_states = first_hidden_states if output_hidden_states else None
    for layer in layers:
        hidden_state = layer(hidden_state)
        if output_hidden_states:
            hidden_states = hidden_states + (hidden_state,)
    pooled = torch.flatten(hidden_state if pooler is None else pooler(hidden_state), 1)
    if not return_dict:
        return (hidden_state, pooled) + ((hidden_states,) if hidden_states is not None else ())
    return BaseModelOutputWithPoolingAndNoAttention(
        last_hidden_state=hidden_state, pooler_output=pooled, hidden_states=hidden_states
    )


class CifarConvBlock(nn.Module):
    """conv3x3 → BN (`bn`) → ReLU (`activation`) → 2×2 max-pool (`pool`, or Identity).

    `activation` is applied only to the BN output, so a forward pre-hook on it sees the pre-ReLU activation.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.bn(self.conv(hidden_state))))


class CifarPreTrainedModel(PreTrainedModel):
    """Base of the CIFAR-style models: the authors' init and the classification output."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # As in the authors' code: Kaiming normal (fan_out, relu) for conv weights, BN weight 1 and bias 0;
        # conv biases and Linear layers keep PyTorch's default init.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)

    def _classifier_output(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        hidden_states: tuple[torch.Tensor, ...] | None,
        return_dict: bool,
        kwargs: dict,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        loss = None
        if labels is not None:
            # Like transformers' ResNetForImageClassification: cross-entropy for integer labels and num_labels > 1
            # (regression / multi-label per config.problem_type); `num_items_in_batch` from the Trainer is honoured.
            loss_kwargs = {k: kwargs[k] for k in _LOSS_KWARGS if kwargs.get(k) is not None}
            loss = self.loss_function(labels, logits, self.config, **loss_kwargs)
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)

    def _resolve_flags(self, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool]:
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
            return_dict = True if return_dict is None else bool(return_dict)
        return output_hidden_states, return_dict


class CifarConvStackModel(CifarPreTrainedModel):
    """Base of the base models that are a stack of `CifarConvBlock`s (`self.blocks`, Conv4 and VGG).

    `pooler_output` is the flattened last feature map; the hidden states are the blocks' outputs.
    """

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        output_hidden_states, return_dict = self._resolve_flags(output_hidden_states, return_dict)
        return run_layers(pixel_values, self.blocks, output_hidden_states, return_dict)


class CifarImageClassifier(CifarPreTrainedModel):
    """Base of the `...ForImageClassification` heads: `self.classifier` on the base model's `pooler_output`.

    The base model is the attribute named by `base_model_prefix` (`resnet`, `vgg`, `conv4`).
    """

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        output_hidden_states, return_dict = self._resolve_flags(output_hidden_states, return_dict)
        outputs = self.base_model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        return self._classifier_output(logits, labels, outputs.hidden_states, return_dict, kwargs)
