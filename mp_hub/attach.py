"""`attach`: put φ into a Hub CNN or ViT in place, one `PerturbSite` per block, by `model_edits` wrappers.

The model keeps its class, config and `save_pretrained`. φ is registered once on the model (`metaperturb_phi`)
and the sites in `metaperturb_sites` (a ModuleDict), so `.to()`, `state_dict()`, `train()/eval()`, DDP and
accelerate see them. The edits are callable objects, not closures, so `copy.deepcopy(model)` gives a copy whose
edits use the copy's sites.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import AttachError, ConfigError
from .hub import push_folder
from .mean_mode import MeanModeCalibration, build_calibration
from .model_edits import module_key, replace_forward
from .perturb import MetaPerturb
from .perturbed_save import save_attached
from .resolvers import Resolution, SiteSpec, feature_map, resolve
from .site import PerturbSite
from .site_hooks import FusedReLU, SiteHook, SiteRecord, hook_sites

logger = logging.getLogger(__name__)

PHI_ATTR = "metaperturb_phi"
SITES_ATTR = "metaperturb_sites"
CALIBRATION_ATTR = "metaperturb_calibration"  # mean-mode norm statistics, see mp_hub.mean_mode
HANDLE_ATTR = "_metaperturb_handle"


def _spatial_norm(model: nn.Module, spatial_norm: float | None) -> float:
    if spatial_norm is None:
        size = getattr(getattr(model, "config", None), "image_size", None)
        if isinstance(size, Sequence) and size:
            size = size[0]  # H: the site scale compares H (a feature map's height) with H₀
        if size is None:
            raise AttachError(
                f"the input image size of {type(model).__name__} is unknown (no config.image_size): pass "
                "spatial_norm=H0, the training image size (e.g. spatial_norm=32 for CIFAR, 224 for ImageNet)"
            )
        spatial_norm = size
    if not float(spatial_norm) > 0:
        raise AttachError(f"spatial_norm must be > 0, got {spatial_norm!r}")
    return float(spatial_norm)


def _warn_channel_range(phi: MetaPerturb, sites: Sequence[SiteSpec]) -> None:
    """φ transfers across widths, but far outside those it was meta-trained on its scale features extrapolate."""
    seen = phi.config.provenance.get("site_channels")
    if not (isinstance(seen, Sequence) and len(seen) == 2):
        return
    low, high = float(seen[0]), float(seen[1])
    outside = [f"{s.name} ({s.channels})" for s in sites if s.channels < low / 4 or s.channels > 4 * high]
    if outside:
        logger.warning(
            "φ was meta-trained on sites of %g to %g channels; these sites are far outside that range, where "
            "φ is untested: %s",
            low,
            high,
            ", ".join(outside),
        )


def _reference_tensor(model: nn.Module) -> Tensor | None:
    return next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)


def find_handle(model: nn.Module) -> AttachedPerturbation | None:
    """The live handle of φ attached to `model`, or None."""
    return model.__dict__.get(HANDLE_ATTR)


def handle_of(model: nn.Module) -> AttachedPerturbation:
    """The handle of φ attached to `model`, also through a DDP / DataParallel / torch.compile wrapper."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        handle = find_handle(candidate) if isinstance(candidate, nn.Module) else None
        if handle is not None:
            return handle
    raise AttachError(f"no φ is attached to this {type(model).__name__}: call mp_hub.attach(model, phi) first")


def attach(
    model: nn.Module,
    phi: MetaPerturb,
    *,
    targets: str | Sequence[str] | None = None,
    placement: str = "output",
    spatial_norm: float | None = None,
    channel_norm: float | None = None,
    inference_mode: str = "mc",
    trainable_phi: bool = False,
    fuse_relu: bool = True,
) -> AttachedPerturbation:
    """Insert φ into `model` in place, one `PerturbSite` per block, and return the handle.

    Without `targets` the model's `config.model_type` picks a registered resolver (see `mp_hub.resolvers`).
    `targets` names modules of any `nn.Module`: a regex (full match over module names) or a list of names /
    dotted suffixes; `placement` is then "output" (hook on the module's output) or "input" (its first input).
    `channel_norm` (C₀) defaults to φ's `config.channel_norm`, `spatial_norm` (H₀) to `model.config.image_size`.
    `fuse_relu`: where a site is a pre-hook on an `nn.ReLU` module (ResNet blocks: the paper's placement), the site
    applies the ReLU itself and the module passes its input through: identical outputs and gradients, one
    elementwise pass less per block forward and backward (undone by `detach`).
    """
    if not isinstance(model, nn.Module):
        raise AttachError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(phi, MetaPerturb):
        raise AttachError(f"phi must be a mp_hub.MetaPerturb, got {type(phi).__name__}")
    if find_handle(model) is not None or any(hasattr(model, a) for a in (PHI_ATTR, SITES_ATTR, CALIBRATION_ATTR)):
        raise AttachError(f"φ is already attached to this {type(model).__name__}: call handle.detach() first")
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        raise AttachError("attach φ to the bare model (model.module) before wrapping it in DataParallel/DDP")
    if isinstance(model, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        # φ and the sites become submodules of the model: a container would run or iterate them as its layers
        raise AttachError(f"cannot attach to a bare nn.{type(model).__name__}: wrap it in a module that calls it")
    resolver, resolution = resolve(model, targets, placement)
    h0 = _spatial_norm(model, spatial_norm)
    c0 = float(channel_norm if channel_norm is not None else phi.config.channel_norm)
    _warn_channel_range(phi, resolution.sites)
    try:
        sites = {
            module_key(s.name): PerturbSite(
                phi, s.channels, spatial_norm=h0, channel_norm=c0, inference_mode=inference_mode
            )
            for s in resolution.sites
        }
    except ConfigError as err:
        raise AttachError(f"cannot build the sites: {err}") from err
    if len(sites) != len(resolution.sites):
        raise AttachError("two sites map to the same key; module names must stay distinct once dots become '-'")
    handle = AttachedPerturbation(
        model,
        phi,
        resolver=resolver,
        targets=targets,
        placement=placement,
        spatial_norm=h0,
        channel_norm=c0,
        inference_mode=inference_mode,
        trainable_phi=trainable_phi,
    )
    handle._install(resolution, sites, fuse_relu)
    logger.info("attached φ to %s\n%s", type(model).__name__, handle.report())
    return handle


class AttachedPerturbation:
    """Handle on φ attached to a model: site records, report, κ / inference mode, on/off, detach, save/push."""

    def __init__(
        self, model, phi, *, resolver, targets, placement, spatial_norm, channel_norm, inference_mode, trainable_phi
    ):
        self.model, self.phi = model, phi
        self.resolver, self.targets, self.placement = resolver, targets, placement
        self.spatial_norm, self.channel_norm = spatial_norm, channel_norm
        self.inference_mode, self.trainable_phi = inference_mode, bool(trainable_phi)
        config = getattr(model, "config", None)
        self.base_model_id = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or None
        self.sites: list[SiteRecord] = []
        self.enabled = True
        self._edits: list = []  # model_edits handles: the sites' hooks and the fused ReLUs
        self._fused_relu_edits: list = []
        self.calibration: MeanModeCalibration | None = None  # once calibrate_mean_mode has run
        self._phi_requires_grad = [p.requires_grad for p in phi.parameters()]

    def _install(self, resolution: Resolution, sites: dict[str, PerturbSite], fuse_relu: bool) -> None:
        model, ref = self.model, _reference_tensor(self.model)
        if ref is not None:  # φ and the sites follow the model's device and floating dtype
            self.phi.to(device=ref.device, dtype=ref.dtype)
            for site in sites.values():
                site.to(device=ref.device, dtype=ref.dtype)
        model.add_module(PHI_ATTR, self.phi)  # the one registration of φ; sites hold it outside their modules
        model.add_module(SITES_ATTR, nn.ModuleDict(sites))
        for p in self.phi.parameters():
            p.requires_grad_(self.trainable_phi)
        site_of = dict(zip((spec.name for spec in resolution.sites), sites.items()))
        self._fused_relu_edits = []

        def site_hook(spec: SiteSpec) -> SiteHook:
            key, site = site_of[spec.name]
            site.train(model.training)
            record = SiteRecord(spec.name, key, spec.channels, spec.placement, spec.spatial)
            self.sites.append(record)
            hook = SiteHook(self, record, site, spec.adapter)
            if fuse_relu and spec.placement == "input" and type(spec.module) is nn.ReLU and spec.adapter is feature_map:
                site.fused_relu = True
                self._fused_relu_edits.append(replace_forward(spec.module, FusedReLU(hook)))
            return hook

        self._edits = hook_sites(resolution, site_hook) + self._fused_relu_edits
        model.__dict__[HANDLE_ATTR] = self

    @property
    def attached(self) -> bool:
        return find_handle(self.model) is self

    def _check_attached(self) -> None:
        if not self.attached:
            raise AttachError("this handle was detached; attach φ again with mp_hub.attach(model, phi)")

    def site_modules(self) -> dict[str, PerturbSite]:
        """Site records' names → the `PerturbSite` modules, in model order."""
        self._check_attached()
        modules = getattr(self.model, SITES_ATTR)
        return {r.name: modules[r.key] for r in self.sites}

    def site_list(self) -> list[PerturbSite]:
        return list(self.site_modules().values())

    @property
    def fused_relus(self) -> list[nn.Module]:
        """The ReLU modules whose rectification the sites before them do (see `attach(fuse_relu=...)`)."""
        return [edit.module for edit in self._fused_relu_edits]

    @property
    def noise_coeff(self) -> float:
        return float(next(iter(self.site_modules().values())).noise_coeff)

    def set_noise_coeff(self, value: float) -> None:
        """κ ∈ [0, 1] on every site (anneal it over the first steps of training)."""
        for site in self.site_modules().values():
            site.set_noise_coeff(value)

    def set_inference_mode(self, mode: str) -> None:
        """ "mc" (sample the noise), "mean" (its expectation, deterministic) or "off" (identity) on every site."""
        for site in self.site_modules().values():
            site.set_inference_mode(mode)
        self.inference_mode = mode

    def calibrate_mean_mode(
        self,
        batches: Iterable[Any],
        *,
        max_images: int | None = None,
        mc_fit_steps: int = 0,
        mc_samples: int = 20,
        seed: int = 0,
        progress: bool = False,
    ) -> int:
        """Measure norm statistics for "mean" mode on training images and install them; returns the number of
        images used. See `mp_hub.calibrate_mean_mode`."""
        self._check_attached()
        calibration = build_calibration(
            self.model,
            self.site_list(),
            batches,
            max_images=max_images,
            mc_fit_steps=mc_fit_steps,
            mc_samples=mc_samples,
            seed=seed,
            progress=progress,
        )
        self.install_calibration(calibration)
        return calibration.num_images

    def install_calibration(self, calibration: MeanModeCalibration) -> None:
        """Use `calibration` for mean mode from now on (replacing any other); it is saved with the sites."""
        self.remove_calibration()
        self.model.add_module(CALIBRATION_ATTR, calibration)
        calibration.install()
        self.calibration = calibration

    def remove_calibration(self) -> None:
        """Mean mode reads the norm layers' own statistics again."""
        if self.calibration is not None:
            self.calibration.remove()
            delattr(self.model, CALIBRATION_ATTR)
            self.calibration = None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Every site is the identity inside (the site hooks return early: outputs equal the bare model's)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def phi_parameters(self) -> list[nn.Parameter]:
        return list(self.phi.parameters())

    def model_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the model but φ's (by identity): the θ of the paper."""
        phi_ids = {id(p) for p in self.phi.parameters()}
        return [p for p in self.model.parameters() if id(p) not in phi_ids]

    def report(self) -> str:
        """A text table of the sites, plus φ's and the model's parameter counts."""
        rows = [("#", "site", "placement", "channels", "spatial")]
        rows += [
            (str(i), r.name, r.placement, str(r.channels), "x".join(map(str, r.spatial)) if r.spatial else "?")
            for i, r in enumerate(self.sites)
        ]
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        n_phi = sum(p.numel() for p in self.phi_parameters())
        model_params = self.model_parameters()
        n_trainable = sum(p.numel() for p in model_params if p.requires_grad)
        lines += [
            f"φ: {n_phi} parameters, {'trainable' if self.trainable_phi else 'frozen'}, shared by {len(self.sites)} "
            f"sites ({self.resolver}); C0={self.channel_norm:g}, H0={self.spatial_norm:g}, "
            f"inference_mode={self.inference_mode!r}",
            f"model: {n_trainable} trainable of {sum(p.numel() for p in model_params)} parameters",
        ]
        return "\n".join(lines)

    def detach(self) -> None:
        """Remove the edits, the sites and φ: the model is the untouched model again (bit-exact outputs)."""
        if not self.attached:
            return
        for edit in self._edits:
            edit.remove()
        self._edits.clear()
        self._fused_relu_edits.clear()
        self.remove_calibration()
        for name in (SITES_ATTR, PHI_ATTR):
            delattr(self.model, name)
        for p, flag in zip(self.phi.parameters(), self._phi_requires_grad):
            p.requires_grad_(flag)
        del self.model.__dict__[HANDLE_ATTR]
        logger.info("detached φ from %s", type(self.model).__name__)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> Path:
        """Base model as usual (plain transformers loads it) + metaperturb.safetensors, config and card."""
        self._check_attached()
        return save_attached(self, save_directory, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload a MetaPerturb-perturbed model with mp_hub",
        branch: str | None = None,
        create_pr: bool = False,
        api=None,
    ):
        """Save into a temporary folder and upload it to `repo_id` (a bare name: in your namespace) in one
        commit, on `branch` or as a pull request (`create_pr`); returns the CommitInfo."""
        self._check_attached()
        return push_folder(
            lambda folder, full_id: self.save_pretrained(folder, repo_id=full_id),
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            branch=branch,
            create_pr=create_pr,
            api=api,
        )

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"AttachedPerturbation({type(self.model).__name__}, {len(self.sites)} sites, {state})"

    def state_module(self) -> nn.Module:
        """φ + sites (+ the mean-mode calibration, if any) as one module: what metaperturb.safetensors holds.

        Keys: `phi.*`, `sites.<key>.*` and `calibration.stats.<norm key>.*`.
        """
        self._check_attached()
        parts = {"phi": self.phi, "sites": getattr(self.model, SITES_ATTR)}
        if self.calibration is not None:
            parts["calibration"] = self.calibration
        return nn.ModuleDict(parts)

    def base_state_dict(self) -> dict[str, Tensor]:
        """The model's state dict without φ, the sites and the calibration: the keys of the untouched model."""
        skip = (f"{PHI_ATTR}.", f"{SITES_ATTR}.", f"{CALIBRATION_ATTR}.")
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(skip)}


def calibrate_mean_mode(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    max_images: int | None = None,
    mc_fit_steps: int = 0,
    mc_samples: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> int:
    """Measure the norm statistics of "mean" mode on `batches` (training images, no augmentation needed) and
    store them with the sites, so that eval-mode "mean" passes use them. Returns the number of images used.

    `mc_fit_steps` > 0: then fit those statistics so that "mean" mode matches the MC-`mc_samples` average on the
    same images (it keeps the images in memory and costs `mc_samples` passes over them plus `mc_fit_steps`
    forward/backward passes of 128 images; `seed` fixes its draws and batches). The fit also gives every plain
    `nn.LayerNorm` a mean-mode weight and bias: a LayerNorm model (a ViT) can only be calibrated this way.

    `batches` yields tensors, `(pixel_values, labels)` or dicts with `pixel_values` (a DataLoader works);
    `max_images` caps how many are used. The model's own statistics, its mode and the sites' state are left
    unchanged. Calibrating again replaces the previous calibration. In a multi-process run, give every
    process the same images (the result is then identical everywhere). `model` may be a DDP / compile wrapper.
    `progress`: progress bars for the fit's passes.
    """
    return handle_of(model).calibrate_mean_mode(
        batches, max_images=max_images, mc_fit_steps=mc_fit_steps, mc_samples=mc_samples, seed=seed, progress=progress
    )
