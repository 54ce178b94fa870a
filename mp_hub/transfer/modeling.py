"""Model, φ and regularizer of the transfer recipe, with clear errors for each way they can be missing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import AttachError, CheckpointError, ConfigError, NotCachedError
from ..mean_mode import calibration_targets
from ..perturb import MetaPerturb
from ..regularizers import DropBlock2d, attach_regularizer, linear_drop_prob, set_drop_prob
from ..schedules import linear_noise_coeff
from .data import calibration_batches

logger = logging.getLogger(__name__)

_ZOO_HINT = "zoo names are listed by `mp-hub zoo`"


def load_phi(perturb_model_id: str, token: str | None = None) -> MetaPerturb:
    """φ from a zoo name, a local folder or a Hub id; a zoo entry that cannot be loaded says how to get it."""
    try:
        return MetaPerturb.from_pretrained(perturb_model_id, token=token)
    except NotCachedError as err:
        raise NotCachedError(f"--perturb_model_id: {err}; or pass a zoo name ({_ZOO_HINT})") from err
    except CheckpointError as err:
        raise CheckpointError(f"--perturb_model_id '{perturb_model_id}': {err}; {_ZOO_HINT}") from err


@dataclass
class BuiltModel:
    model: nn.Module
    image_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    base_model: str | None = None
    processor: object | None = None


def _int_size(value) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    for key in ("height", "shortest_edge"):  # an image processor's `size`: a dict, or a SizeDict (attributes)
        found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if isinstance(found, int):
            return found
    return None


def check_image_size(model: nn.Module, image_size: int) -> None:
    """One eval forward of a blank image: a size the model cannot take (below a ViT's patch, unlike the size its
    position embeddings were built for, ...) is a `ConfigError` naming --image_size now, not a crash at step 0."""
    channels = getattr(getattr(model, "config", None), "num_channels", 3)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"--image_size {image_size} does not fit {type(model).__name__}: {err}") from err
    finally:
        model.train(was_training)


def build_model(args, labels: list[str]) -> BuiltModel:
    """A fresh `--model_type` (with `--model_config_overrides`) or a pretrained `--model_name_or_path`, checked
    to take `--image_size` images."""
    built = _build_model(args, labels)
    check_image_size(built.model, built.image_size)
    return built


def _build_model(args, labels: list[str]) -> BuiltModel:
    id2label = {i: name for i, name in enumerate(labels)}
    label2id = {name: i for i, name in id2label.items()}
    if args.model_type:
        from ..models import model_from_type

        size = args.image_size or 32
        overrides = dict(args.model_config_overrides or {})
        model = model_from_type(args.model_type, len(labels), size, **overrides)
        model.config.id2label, model.config.label2id = id2label, label2id
        return BuiltModel(model, size)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    hub = dict(token=args.hub_token, trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            **hub,
        )
    except OSError as err:
        raise NotCachedError(
            f"--model_name_or_path '{args.model_name_or_path}' could not be loaded (not a folder, not in the local "
            f"Hugging Face cache, or the Hub is unreachable): {err}"
        ) from err
    except (ValueError, RuntimeError) as err:
        if "size mismatch" in str(err) or "ignore_mismatched_sizes" in str(err):
            raise ConfigError(f"{err}\nAdd --ignore_mismatched_sizes to replace the pretrained head") from err
        raise
    try:
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path, **hub)
    except (OSError, ValueError):
        processor = None
    size = args.image_size or _int_size(getattr(model.config, "image_size", None))
    size = size or _int_size(getattr(processor, "size", None)) or 224
    mean = tuple(getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5))
    std = tuple(getattr(processor, "image_std", None) or (0.5, 0.5, 0.5))
    return BuiltModel(model, size, mean, std, base_model=args.model_name_or_path, processor=processor)


@dataclass
class Regularization:
    """The chosen regularizer on the model, and how it changes with the step (κ warm-up, DropBlock ramp)."""

    kind: str
    handle: object | None = None  # mp_hub.attach handle ("metaperturb")
    placement: object | None = None  # RegularizerPlacement ("dropblock")
    phi_id: str | None = None
    info: dict = field(default_factory=dict)

    def set_step(self, step: int, total_steps: int, args) -> dict[str, float]:
        if self.kind == "metaperturb":
            kappa = linear_noise_coeff(step, total_steps, args.noise_anneal_fraction)
            self.handle.set_noise_coeff(kappa)
            return {"noise_coeff": kappa}
        if self.kind == "dropblock":
            # Ghiasi et al.: the drop rate grows linearly from 0 to its final value over the whole of training.
            prob = linear_drop_prob(step, total_steps, args.dropblock_prob)
            set_drop_prob(self.placement.model, prob)
            return {"drop_prob": prob}
        return {}

    def finish(self) -> None:
        """After training: the full φ (κ = 1); DropBlock is the identity in eval mode anyway."""
        if self.handle is not None:
            self.handle.set_noise_coeff(1.0)

    def calibrate_mean_mode(
        self, data, max_images: int, batch_size: int, seed: int, mc_fit_steps: int = 0
    ) -> int | None:
        """Mean-mode BatchNorm statistics from the training images (`mp_hub.mean_mode`), after `finish`; with
        `mc_fit_steps`, fitted to the MC average (LayerNorm weights too).

        None when there is nothing to do: no φ, `max_images` 0, or a model without BatchNorm (e.g. a ViT) and
        no fit. Every process uses the same images, so the calibration is identical everywhere.
        """
        if self.handle is None or max_images == 0:
            return None
        model = self.handle.model
        if not calibration_targets(model, layer_norms=mc_fit_steps > 0):
            logger.info(
                "mean-mode calibration: %s has no BatchNorm (LayerNorms are calibrated only with "
                "--mean_mode_mc_fit_steps), nothing to do",
                type(model).__name__,
            )
            return None
        return self.handle.calibrate_mean_mode(
            calibration_batches(data, batch_size, seed), max_images=max_images, mc_fit_steps=mc_fit_steps, seed=seed
        )

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        # By identity: φ is excluded even if someone unfroze it.
        params = self.handle.model_parameters() if self.handle is not None else list(model.parameters())
        return [p for p in params if p.requires_grad]


def apply_regularizer(args, built: BuiltModel) -> Regularization:
    model = built.model
    if args.regularizer == "none":
        return Regularization("none")
    if args.regularizer == "dropblock":
        if not 0.0 <= args.dropblock_prob < 1.0:
            raise ConfigError(f"--dropblock_prob must be in [0, 1), got {args.dropblock_prob}")
        try:
            placement = attach_regularizer(
                model, lambda spec: DropBlock2d(0.0, args.dropblock_size), targets=args.perturb_targets
            )
        except AttachError as err:
            raise AttachError(f"--regularizer dropblock: {err} (here: --perturb_targets REGEX)") from err
        info = {"dropblock_prob": args.dropblock_prob, "dropblock_size": args.dropblock_size, "sites": len(placement)}
        return Regularization("dropblock", placement=placement, info=info)
    from ..attach import attach

    phi = load_phi(args.perturb_model_id, token=args.hub_token)
    try:
        handle = attach(model, phi, targets=args.perturb_targets, spatial_norm=built.image_size, inference_mode="mc")
    except AttachError as err:
        raise AttachError(f"--regularizer metaperturb: {err} (here: --perturb_targets REGEX)") from err
    return Regularization("metaperturb", handle=handle, phi_id=args.perturb_model_id, info={"sites": len(handle.sites)})
