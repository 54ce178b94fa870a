"""Monte-Carlo evaluation: class probabilities averaged over stochastic passes, and accuracy / NLL / ECE.

`predict_proba` is deliberately plain (one batch at a time, `mc_samples` forward passes per batch); a faster
batched MC lives in `mp_hub.mean_mode.predict`. The model runs in eval mode, so BatchNorm and the perturbation
sites use their running statistics; in the sites' "mc" mode each pass draws fresh noise, in "mean" mode one
deterministic pass is made whatever `mc_samples` says.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import ConfigError, InvalidInputError
from .site import INFERENCE_MODES, PerturbSite

logger = logging.getLogger(__name__)

__all__ = ["compute_metrics", "is_stochastic", "predict_proba", "sites_inference_mode"]


def perturb_sites(model: nn.Module) -> list[PerturbSite]:
    return [m for m in model.modules() if isinstance(m, PerturbSite)]


def is_stochastic(model: nn.Module) -> bool:
    """True when an eval-mode forward pass of `model` is random: a site in "mc" mode with κ > 0."""
    return any(s.inference_mode == "mc" and float(s.noise_coeff) > 0 for s in perturb_sites(model))


@contextlib.contextmanager
def sites_inference_mode(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Temporarily set every PerturbSite of `model` to `mode` (None: leave them as they are)."""
    if mode is None:
        yield
        return
    if mode not in INFERENCE_MODES:
        raise ConfigError(f"inference_mode must be one of {INFERENCE_MODES}, got {mode!r}")
    sites = perturb_sites(model)
    before = [s.inference_mode for s in sites]
    try:
        for site in sites:
            site.set_inference_mode(mode)
        yield
    finally:
        for site, old in zip(sites, before):
            site.set_inference_mode(old)


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """(pixel_values, labels) of a batch given as a pair or a dict."""
    if isinstance(batch, dict):
        return batch["pixel_values"], batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise InvalidInputError(
        f"a batch must be (pixel_values, labels) or a dict with 'pixel_values' and 'labels', got {type(batch)}"
    )


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: a tensor, `.logits` (ModelOutput), or the first element of a tuple."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise InvalidInputError(f"cannot find the logits in a model output of type {type(output).__name__}")


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    batches: Iterable[Any],
    mc_samples: int = 1,
    *,
    inference_mode: str | None = None,
    seed: int | None = None,
    gather: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(probabilities (N, C) float32, labels (N,)) of `model` on `batches`, averaged over `mc_samples` passes.

    `batches` yields `(pixel_values, labels)` or dicts with those keys (e.g. a DataLoader). The model is put
    in eval mode and restored afterwards. `inference_mode` temporarily overrides the sites' mode. With `seed`
    the noise is drawn from a forked RNG seeded with it: the result is reproducible and the caller's RNG
    stream (e.g. training's) is left untouched. `gather` (e.g. `accelerator.gather_for_metrics`) is applied
    to each batch's probabilities and labels, so every process returns the whole evaluation set. `progress`
    shows a tqdm bar over the batches.
    """
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ConfigError(f"mc_samples must be a positive int, got {mc_samples!r}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    was_training = model.training
    probs_out, labels_out = [], []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
    try:
        model.eval()
        with rng, sites_inference_mode(model, inference_mode):
            if seed is not None:
                torch.manual_seed(seed)
            passes = mc_samples if is_stochastic(model) else 1  # a deterministic model needs one pass
            for batch in tqdm(
                batches,
                desc=f"evaluating ({passes} pass{'es' if passes > 1 else ''})",
                disable=not progress,
                leave=False,
            ):
                pixel_values, labels = unpack_batch(batch)
                pixel_values, labels = pixel_values.to(device), labels.to(device)
                total = None
                for _ in range(passes):
                    p = torch.softmax(logits_of(model(pixel_values=pixel_values)).float(), dim=-1)
                    total = p if total is None else total + p
                probs = total / passes
                if gather is not None:
                    probs, labels = gather(probs), gather(labels)
                probs_out.append(probs.cpu())
                labels_out.append(labels.cpu())
    finally:
        model.train(was_training)
    if not probs_out:
        raise InvalidInputError("predict_proba got no batches")
    return torch.cat(probs_out), torch.cat(labels_out)


@functools.cache
def _metric(name: str):
    from .metrics import load_metric

    return load_metric(name)


def compute_metrics(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """accuracy, nll and ece (`n_bins` equal-width bins) from the `mp_hub.metrics` evaluate modules."""
    probs64 = probs.double()
    references = labels.long().tolist()
    accuracy = _metric("accuracy").compute(predictions=probs64.argmax(-1).tolist(), references=references)
    nll = _metric("nll").compute(probabilities=probs64.tolist(), references=references)
    ece = _metric("ece").compute(probabilities=probs64.tolist(), references=references, n_bins=n_bins)
    return {"accuracy": accuracy["accuracy"], "nll": nll["nll"], "ece": ece["ece"]}
