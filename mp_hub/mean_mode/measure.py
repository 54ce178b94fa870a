"""Moment matching: each BatchNorm's average batch statistics over training images, the sites in "mean" mode."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..evaluation import sites_inference_mode, unpack_batch

logger = logging.getLogger(__name__)


def _pixel_values(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict) and "pixel_values" in batch:
        return batch["pixel_values"]
    return unpack_batch(batch)[0]


@torch.no_grad()
def measure_mean_mode_stats(
    model: nn.Module,
    norms: dict[str, nn.modules.batchnorm._BatchNorm],
    batches: Iterable[Any],
    max_images: int | None,
    keep: list[Tensor] | None = None,
) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """Average batch statistics of each BatchNorm over `batches`, sites in eval "mean" mode; model left as it was.
    `keep`: a list that receives the images used (on the model's device)."""
    saved = {
        n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
        for n, m in norms.items()
    }
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        model.eval()
        for norm in norms.values():
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average of the batch statistics
            norm.train()
        with sites_inference_mode(model, "mean"):
            for batch in batches:
                pixel_values = _pixel_values(batch)
                if max_images is not None:
                    pixel_values = pixel_values[: max_images - seen]
                if pixel_values.shape[0] < 2:
                    if pixel_values.shape[0] == 1:
                        logger.info("calibration: a last batch of one image has no variance; skipped")
                    break
                pixel_values = pixel_values.to(device)
                if norms:  # (none: a LayerNorm model, which only needs the images kept for the fit)
                    model(pixel_values)  # positional: HF models and plain modules alike
                if keep is not None:
                    keep.append(pixel_values)
                seen += pixel_values.shape[0]
                if max_images is not None and seen >= max_images:
                    break
        measured = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms.items()}
    finally:
        for name, norm in norms.items():
            mean, var, tracked, momentum = saved[name]
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.copy_(tracked)
            norm.momentum = momentum
        model.train(was_training)
    return measured, seen
