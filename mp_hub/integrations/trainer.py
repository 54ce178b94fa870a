"""`MetaPerturbCallback`: MetaPerturb in a transformers `Trainer` with three lines.

    handle = mp_hub.attach(model, MetaPerturb.from_pretrained(PHI_ID))
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[MetaPerturbCallback(handle)])
    trainer.train()

φ is frozen by `attach`, so the Trainer's optimizer (all parameters with requires_grad) leaves it out.
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import TrainerCallback

from ..errors import AttachError, ConfigError
from ..schedules import linear_noise_coeff
from ..site import INFERENCE_MODES, PerturbSite

logger = logging.getLogger(__name__)


class MetaPerturbCallback(TrainerCallback):
    """Anneal κ over the first `anneal_fraction` of training and switch the sites' mode for evaluation.

    Args:
        handle_or_model: the handle returned by `mp_hub.attach`, or a model holding `PerturbSite`s.
        anneal_fraction: κ goes 0 → 1 linearly over this fraction of `state.max_steps` (0: κ = 1 throughout).
        eval_inference_mode: the sites' mode outside training steps (evaluation, prediction, after training):
            "mean" (default) is one deterministic pass; "mc" keeps sampling noise (average several passes
            yourself, e.g. with `mp_hub.evaluation.predict_proba`, for MC predictions).
        train_inference_mode: the sites' mode inside training steps ("mc", the authors' behaviour).

    TrainerCallback has no "evaluation begins" event, so the mode is switched around every training step:
    `on_step_begin` sets the training mode (and κ), `on_step_end` the evaluation mode; whatever the Trainer runs
    between steps or after training (evaluate, predict) therefore sees the evaluation mode.
    """

    def __init__(
        self,
        handle_or_model,
        anneal_fraction: float = 0.4,
        eval_inference_mode: str = "mean",
        train_inference_mode: str = "mc",
    ):
        for name, mode in (
            ("eval_inference_mode", eval_inference_mode),
            ("train_inference_mode", train_inference_mode),
        ):
            if mode not in INFERENCE_MODES:
                raise ConfigError(f"{name} must be one of {INFERENCE_MODES}, got {mode!r}")
        if not 0.0 <= anneal_fraction <= 1.0:
            raise ConfigError(f"anneal_fraction must be in [0, 1], got {anneal_fraction!r}")
        self.target = handle_or_model
        self.anneal_fraction = float(anneal_fraction)
        self.eval_inference_mode = eval_inference_mode
        self.train_inference_mode = train_inference_mode
        self.noise_coeff = 1.0
        if not self._sites():
            raise AttachError(
                f"{type(handle_or_model).__name__} has no perturbation sites: attach φ first with "
                "mp_hub.attach(model, phi)"
            )

    def _sites(self) -> list[PerturbSite]:
        target = self.target
        if isinstance(target, nn.Module):
            return [m for m in target.modules() if isinstance(m, PerturbSite)]
        if hasattr(target, "site_modules"):  # an mp_hub.attach handle
            return list(target.site_modules().values())
        raise AttachError(f"expected an mp_hub.attach handle or a model, got {type(target).__name__}")

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

    def on_init_end(self, args, state, control, **kwargs):
        self._set_mode(self.eval_inference_mode)

    def on_train_begin(self, args, state, control, **kwargs):
        logger.info(
            "MetaPerturb: κ 0 → 1 over the first %d of %d steps; sites in %r for evaluation",
            int(self.anneal_fraction * state.max_steps),
            state.max_steps,
            self.eval_inference_mode,
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self._set_noise_coeff(linear_noise_coeff(state.global_step, state.max_steps, self.anneal_fraction))
        self._set_mode(self.train_inference_mode)

    def on_step_end(self, args, state, control, **kwargs):
        self._set_mode(self.eval_inference_mode)

    def on_train_end(self, args, state, control, **kwargs):
        # Training is over: the model is used with the full φ from now on, whatever κ the last step had.
        self._set_noise_coeff(1.0)
        self._set_mode(self.eval_inference_mode)
