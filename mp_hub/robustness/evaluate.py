"""Accuracy of a model (perturbed or plain) under EoT-PGD attacks, scored as the recipe scores it.

The attacks work on pixels in [0, 1], where ε is defined (as in the paper): each batch's model inputs are mapped
back to pixels with the normalisation they were made with (`pixel_mean`, `pixel_std`; mp_hub's default
(0.5, 0.5) is [-1, 1]), attacked and clipped there, and normalised again for every forward pass. So an L∞ ε of
8/255 is 8 grey levels whatever the model's normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import ConfigError, InvalidInputError
from ..evaluation import is_stochastic, logits_of, sites_inference_mode, unpack_batch
from .attacks import PAPER_EOT_SAMPLES, PAPER_RELATIVE_STEP, PAPER_STEPS, check_positive_int, eot_pgd
from .specs import AttackSpec

PIXEL_RANGE_SLACK = 1e-3  # un-normalised inputs may leave [0, 1] by rounding; more means a wrong normalisation


@dataclass
class RobustnessReport:
    """Accuracy on the same images, clean and under each attack; `stochastic`: whether the model drew noise
    (then the attack averaged `eot_samples` draws and the predictions `mc_samples`, else one of each)."""

    inference_mode: str | None
    stochastic: bool
    samples: int
    clean_accuracy: float
    accuracy: dict[AttackSpec, float] = field(default_factory=dict)
    steps: int = PAPER_STEPS
    eot_samples: int = PAPER_EOT_SAMPLES
    mc_samples: int = 1
    relative_step: float = PAPER_RELATIVE_STEP

    def metrics(self, prefix: str = "eval_adv_") -> dict[str, float]:
        """Flat results for all_results.json: `<prefix>clean_accuracy`, `<prefix><norm>_<ε>_accuracy` per spec
        (e.g. eval_adv_linf_8_255_accuracy), `<prefix>samples`."""
        out = {f"{prefix}clean_accuracy": self.clean_accuracy}
        out.update({f"{prefix}{spec.slug}_accuracy": value for spec, value in self.accuracy.items()})
        return out | {f"{prefix}samples": self.samples}


def evaluate_adversarial(
    model: nn.Module,
    batches: Iterable[Any],
    specs: Sequence[AttackSpec],
    *,
    steps: int = PAPER_STEPS,
    eot_samples: int = PAPER_EOT_SAMPLES,
    mc_samples: int = 100,
    max_samples: int | None = None,
    inference_mode: str | None = None,
    pixel_mean: Sequence[float] = (0.5, 0.5, 0.5),
    pixel_std: Sequence[float] = (0.5, 0.5, 0.5),
    seed: int = 0,
    relative_step: float = PAPER_RELATIVE_STEP,
    random_start: bool = True,
    gather: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> RobustnessReport:
    """Clean and attacked accuracy of `model` on `batches` ((pixel_values, labels) pairs or dicts, normalised with
    `pixel_mean` / `pixel_std`), attacked with EoT-PGD (`eot_pgd`) under each spec.

    The model runs in eval mode (BatchNorm and the sites on running statistics; restored after);
    `inference_mode` ("mc", "mean", "off"; None leaves the sites as they are) is the mode attacked and scored.
    A stochastic model is scored like `predict_proba`: softmax averaged over `mc_samples` passes; the same
    noise scores a batch clean and under every attack (paired). `max_samples`: the first images only (of this
    process's batches: with `gather`, e.g. `accelerator.gather_for_metrics`, each process attacks its shard and
    every process gets the totals). Reproducible from `seed`; the caller's RNG streams are left untouched.
    """
    specs = list(specs)
    if not specs or not all(isinstance(s, AttackSpec) for s in specs):
        raise ConfigError(f"specs must be a non-empty list of AttackSpec (see parse_attack_specs), got {specs!r}")
    for name, value in (("steps", steps), ("eot_samples", eot_samples), ("mc_samples", mc_samples)):
        check_positive_int(name, value)
    if max_samples is not None:
        check_positive_int("max_samples", max_samples)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    mean, std = pixel_stats(pixel_mean, pixel_std)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    mean, std = mean.to(device), std.to(device)

    def classify(pixels: Tensor) -> Tensor:
        return logits_of(model((pixels - mean) / std))

    seeds = torch.Generator().manual_seed(seed)  # one seed per batch and stream, drawn in order
    correct: list[Tensor] = []  # (B, 1 + len(specs)) per batch: clean, then each attack
    seen, was_training = 0, model.training
    rng = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
    try:
        model.eval()
        with rng, sites_inference_mode(model, inference_mode):
            stochastic = is_stochastic(model)
            draws, passes = (eot_samples, mc_samples) if stochastic else (1, 1)
            for batch in tqdm(batches, desc="adversarial evaluation", disable=not progress, leave=False):
                if max_samples is not None and seen >= max_samples:
                    break
                pixel_values, labels = unpack_batch(batch)
                if max_samples is not None:
                    pixel_values, labels = pixel_values[: max_samples - seen], labels[: max_samples - seen]
                seen += len(labels)
                pixels = to_pixels(pixel_values.to(device), mean, std)
                labels = labels.to(device)
                score_seed, *attack_seeds = torch.randint(0, 2**62, (1 + len(specs),), generator=seeds).tolist()
                row = [predicted_right(classify, pixels, labels, passes, score_seed)]
                for spec, attack_seed in zip(specs, attack_seeds):
                    torch.manual_seed(attack_seed)
                    attacked = eot_pgd(classify, pixels, labels, spec, steps=steps, eot_samples=draws,
                                       relative_step=relative_step, random_start=random_start)  # fmt: skip
                    row.append(predicted_right(classify, attacked, labels, passes, score_seed))
                hits = torch.stack(row, dim=1).long()
                correct.append((gather(hits) if gather is not None else hits).cpu())
    finally:
        model.train(was_training)
    if not correct:
        raise InvalidInputError("evaluate_adversarial got no batches")
    accuracy = torch.cat(correct).double().mean(dim=0).tolist()
    return RobustnessReport(
        inference_mode=inference_mode,
        stochastic=stochastic,
        samples=sum(len(c) for c in correct),
        clean_accuracy=accuracy[0],
        accuracy=dict(zip(specs, accuracy[1:])),
        steps=steps,
        eot_samples=draws,
        mc_samples=passes,
        relative_step=relative_step,
    )


@torch.no_grad()
def predicted_right(classify: Callable[[Tensor], Tensor], pixels: Tensor, labels: Tensor, passes: int,
                    seed: int) -> Tensor:  # fmt: skip
    """Whether the softmax averaged over `passes` noise draws (seeded with `seed`) picks each image's label."""
    torch.manual_seed(seed)
    total = sum(torch.softmax(classify(pixels).float(), dim=-1) for _ in range(passes))
    return total.argmax(dim=-1) == labels


def pixel_stats(pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(mean, std) as (1, C, 1, 1) tensors, checked: equal lengths, std > 0."""
    try:
        mean = torch.tensor([float(m) for m in pixel_mean], dtype=torch.float32)
        std = torch.tensor([float(s) for s in pixel_std], dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pixel_mean and pixel_std must be sequences of numbers: {err}") from err
    if mean.numel() == 0 or mean.shape != std.shape or not bool((std > 0).all()):
        raise ConfigError(
            f"pixel_mean and pixel_std need one value per channel and std > 0, got {pixel_mean} and {pixel_std}"
        )
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def to_pixels(pixel_values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Model inputs back in [0, 1]; a batch far outside it was normalised otherwise than `mean`, `std` say."""
    if pixel_values.dim() != 4 or pixel_values.shape[1] != mean.shape[1]:
        shape = tuple(pixel_values.shape)
        raise InvalidInputError(
            f"pixel_values must be (B, {mean.shape[1]}, H, W), one pixel_mean per channel; got {shape}"
        )
    pixels = pixel_values.float() * std + mean
    low, high = pixels.min().item(), pixels.max().item()
    if low < -PIXEL_RANGE_SLACK or high > 1 + PIXEL_RANGE_SLACK:
        raise InvalidInputError(
            f"the images, un-normalised with pixel_mean / pixel_std, span [{low:.3f}, {high:.3f}], not [0, 1]: "
            "pass the normalisation the batches were made with"
        )
    return pixels.clamp(0.0, 1.0)
