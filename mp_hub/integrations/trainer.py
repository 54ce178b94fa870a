"""`MetaPerturbCallback`: MetaPerturb in a transformers `Trainer` with three lines.

    handle = mp_hub.attach(model, MetaPerturb.from_pretrained(PHI_ID))
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[MetaPerturbCallback(handle)])
    trainer.train()

φ is frozen by `attach`, so the Trainer's optimizer (all parameters with requires_grad) leaves it out. Evaluation
runs one deterministic mean-mode pass, calibrated on training images before every evaluation and after training
(uncalibrated, mean mode loses accuracy against MC: docs/mean_mode.md).
"""

from __future__ import annotations

import itertools
import logging
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Subset
from transformers import TrainerCallback

from ..attach import AttachedPerturbation, find_handle
from ..errors import AttachError, ConfigError
from ..mean_mode import calibratable_norms
from ..schedules import linear_noise_coeff
from ..site import INFERENCE_MODES, PerturbSite

logger = logging.getLogger(__name__)


def first_training_batches(train_dataloader: DataLoader, num_images: int, batch_size: int) -> Iterable[Any]:
    """Batches of the first `num_images` examples of the loader's dataset, in dataset order (not the loader's
    shuffled, sharded order: every process calibrates on the same images), collated as the loader collates."""
    dataset = train_dataloader.dataset
    if not isinstance(dataset, IterableDataset):
        dataset = Subset(dataset, range(min(num_images, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=train_dataloader.collate_fn)
    return itertools.islice(loader, -(-num_images // batch_size))


class MetaPerturbCallback(TrainerCallback):
    """Anneal κ over the first `anneal_fraction` of training and switch the sites' mode for evaluation.

    Args:
        handle_or_model: the handle returned by `mp_hub.attach`, or a model holding `PerturbSite`s.
        anneal_fraction: κ goes 0 → 1 linearly over this fraction of `state.max_steps` (0: κ = 1 throughout).
        eval_inference_mode: the sites' mode outside training steps (evaluation, prediction, after training):
            "mean" (default) is one deterministic pass, calibrated (below); "mc" samples the noise, so each
            evaluation pass is one Monte-Carlo draw (average several with `mp_hub.evaluation.predict_proba`);
            "off" evaluates the model without φ.
        train_inference_mode: the sites' mode inside training steps ("mc", the authors' behaviour).
        calibration_images: with "mean", the mean-mode calibration (`handle.calibrate_mean_mode`) is measured on
            the first this many training examples (the transfer recipe's default count) before every evaluation
            during training and after training (training moves the norm statistics it is measured with); the one
            after training stays installed and is saved by `handle.save_pretrained`. 0: never calibrate (warned:
            uncalibrated mean mode loses accuracy against MC). A model without BatchNorm (a ViT) has nothing to
            measure: its mean mode runs as it is (its LayerNorms are fitted only by
            `calibrate_mean_mode(mc_fit_steps=...)`).

    TrainerCallback has no "evaluation begins" event, so the mode is switched around every training step:
    `on_step_begin` sets the training mode (and κ), `on_step_end` the evaluation mode; whatever the Trainer runs
    between steps or after training (evaluate, predict) therefore sees the evaluation mode. The calibration runs
    where the Trainer has decided to evaluate (`on_step_end` / `on_epoch_end` with `control.should_evaluate`).
    """

    def __init__(
        self,
        handle_or_model,
        anneal_fraction: float = 0.4,
        eval_inference_mode: str = "mean",
        train_inference_mode: str = "mc",
        calibration_images: int = 2048,
    ):
        for name, mode in (
            ("eval_inference_mode", eval_inference_mode),
            ("train_inference_mode", train_inference_mode),
        ):
            if mode not in INFERENCE_MODES:
                raise ConfigError(f"{name} must be one of {INFERENCE_MODES}, got {mode!r}")
        if (
            isinstance(anneal_fraction, bool)
            or not isinstance(anneal_fraction, numbers.Real)
            or not 0.0 <= anneal_fraction <= 1.0
        ):
            raise ConfigError(f"anneal_fraction must be a number in [0, 1], got {anneal_fraction!r}")
        if (
            isinstance(calibration_images, bool)
            or not isinstance(calibration_images, int)
            or not (calibration_images == 0 or calibration_images >= 2)
        ):
            raise ConfigError(
                f"calibration_images must be 0 (no calibration) or an int >= 2 (the batch statistics of at least "
                f"two images), got {calibration_images!r}"
            )
        self.target = handle_or_model
        self.anneal_fraction = float(anneal_fraction)
        self.eval_inference_mode = eval_inference_mode
        self.train_inference_mode = train_inference_mode
        self.calibration_images = calibration_images
        self.noise_coeff = 1.0
        self._training = False
        if not self._sites():
            raise AttachError(
                f"{type(handle_or_model).__name__} has no perturbation sites: attach φ first with "
                "mp_hub.attach(model, phi)"
            )
        if self._calibrates() and self._handle() is None:
            raise AttachError(
                "calibrating mean mode needs the handle of mp_hub.attach: pass it (or a model φ was attached to "
                "with mp_hub.attach), or calibration_images=0"
            )

    def _sites(self) -> list[PerturbSite]:
        target = self.target
        if isinstance(target, nn.Module):
            return [m for m in target.modules() if isinstance(m, PerturbSite)]
        if hasattr(target, "site_modules"):  # an mp_hub.attach handle
            return list(target.site_modules().values())
        raise AttachError(f"expected an mp_hub.attach handle or a model, got {type(target).__name__}")

    def _model(self) -> nn.Module:
        return self.target if isinstance(self.target, nn.Module) else self.target.model

    def _handle(self) -> AttachedPerturbation | None:
        return self.target if isinstance(self.target, AttachedPerturbation) else find_handle(self._model())

    def _calibrates(self) -> bool:
        return self.eval_inference_mode == "mean" and self.calibration_images > 0

    def _set_mode(self, mode: str) -> None:
        if hasattr(self.target, "set_inference_mode"):  # the handle also records the mode it saves
            self.target.set_inference_mode(mode)
            return
        for site in self._sites():
            site.set_inference_mode(mode)

    def _set_noise_coeff(self, value: float) -> None:
        self.noise_coeff = value
        for site in self._sites():
            site.set_noise_coeff(value)

    def _calibrate(self, args, train_dataloader: DataLoader | None) -> None:
        if not self._calibrates() or not calibratable_norms(self._model()):
            return
        if train_dataloader is None:
            raise ConfigError("MetaPerturbCallback calibrates mean mode on training images: the Trainer has none")
        batches = first_training_batches(train_dataloader, self.calibration_images, args.per_device_eval_batch_size)
        with torch.random.fork_rng(devices=[]):  # random transforms of the dataset leave training's draws as they were
            self._handle().calibrate_mean_mode(batches, max_images=self.calibration_images)

    def _warn_uncalibrated_mean(self, when: str) -> None:
        logger.warning(
            "MetaPerturbCallback: %s the sites run uncalibrated mean mode, which loses accuracy against MC "
            "(docs/mean_mode.md): leave calibration_images > 0, or call handle.calibrate_mean_mode(train_batches)",
            when,
        )

    def on_init_end(self, args, state, control, **kwargs):
        self._set_mode(self.eval_inference_mode)

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        logger.info(
            "MetaPerturb: κ 0 → 1 over the first %d of %d steps; sites in %r for evaluation%s",
            int(self.anneal_fraction * state.max_steps),
            state.max_steps,
            self.eval_inference_mode,
            f", calibrated on {self.calibration_images} training images" if self._calibrates() else "",
        )
        if self.eval_inference_mode == "mean" and not self._calibrates() and args.eval_strategy != "no":
            self._warn_uncalibrated_mean("in the evaluations during training")

    def on_step_begin(self, args, state, control, **kwargs):
        self._set_noise_coeff(linear_noise_coeff(state.global_step, state.max_steps, self.anneal_fraction))
        self._set_mode(self.train_inference_mode)

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        self._set_mode(self.eval_inference_mode)
        if control.should_evaluate:
            self._calibrate(args, train_dataloader)

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        if control.should_evaluate:
            self._calibrate(args, train_dataloader)

    def on_evaluate(self, args, state, control, **kwargs):
        handle = self._handle()
        if self._training and self._calibrates() and handle is not None:
            # stale after the next step, and kept out of the checkpoint the Trainer may save now
            handle.remove_calibration()

    def on_train_end(self, args, state, control, train_dataloader=None, **kwargs):
        self._training = False
        # Training is over: the model is used with the full φ from now on, whatever κ the last step had.
        self._set_noise_coeff(1.0)
        self._set_mode(self.eval_inference_mode)
        self._calibrate(args, train_dataloader)
        calibration = getattr(self._handle(), "calibration", None)
        uncalibrated = calibration is None or bool(calibration.stale_norms())
        if self.eval_inference_mode == "mean" and uncalibrated and calibratable_norms(self._model()):
            self._warn_uncalibrated_mean("after training")
