"""`PerturbSite`: one insertion point of φ, with its own state.

φ is shared and is *not* a submodule of the site (it is registered once, by whoever owns the sites, e.g.
`mp_hub.attach`); the site owns what is specific to its place in the network: running statistics of the
scale features, the normalisers C₀ and H₀, κ and the inference mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as MF
from . import kernels
from .errors import ConfigError, InvalidInputError
from .kernels.fused import kernels_for, site_forward
from .kernels.passes import NON_FINITE_MESSAGE
from .perturb import MetaPerturb

INFERENCE_MODES = ("mc", "mean", "off")
# x's dtype → the dtype φ's math runs in; the output is cast back to x's dtype. Half inputs are upcast: the scale's
# batch statistics and E[softplus] need float32. A float64 input stays float64 (φ's float32 values are exact in
# it): who passes float64 asks for its precision, e.g. torch.autograd.gradcheck or a float64 reference run.
COMPUTE_DTYPES = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}
_SUPPORTED = ", ".join(str(d).removeprefix("torch.") for d in COMPUTE_DTYPES)
# model.half() / .to(torch.bfloat16) leave a site's buffers (running statistics, κ) in float32: an EMA step of
# 0.1·(new − old) is lost to rounding in half precision, and φ's math runs in float32 for half inputs anyway.
HALF_DTYPES = (torch.float16, torch.bfloat16)


class InputRepeat:
    """One batched Monte-Carlo pass: the first site the pass reaches repeats its input `draws` times (draw-major:
    row d·B + b is draw d of image b), so the network before it runs once and the draws run as one batch."""

    def __init__(self, draws: int):
        self.draws, self.pending = draws, True

    def apply(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor | None]:
        self.pending = False
        if self.draws == 1:  # one draw per pass: x itself (Tensor.repeat would copy it)
            return x, noise
        repeat = (self.draws,) + (1,) * (x.dim() - 1)
        return x.repeat(*repeat), None if noise is None else noise.repeat(*repeat)


@contextlib.contextmanager
def repeating_first_input(sites: Sequence[PerturbSite], draws: int) -> Iterator[InputRepeat]:
    """Within: the first of `sites` that a forward pass reaches repeats its input `draws` times (see
    `InputRepeat`; `mean_mode.mc_predict` uses it). Its `pending` is still True after a pass that reached none."""
    repeat = InputRepeat(draws)
    for site in sites:
        site.input_repeat = repeat
    try:
        yield repeat
    finally:
        for site in sites:
            site.input_repeat = None


class PerturbSite(nn.Module):
    """Apply φ at one place: y = min(x ⊙ (κ·(s ⊙ softplus(μ + ε)) + 1 − κ), clip).

    Statistics: in training mode the scale uses the batch statistics of the features and updates the
    running ones (momentum 0.1, like BatchNorm); in eval mode it uses the running ones. A training batch
    of one has no variance: it uses the running statistics and leaves them unchanged.

    `inference_mode` chooses what to do with the noise, in training and eval alike:
      "mc"   sample ε ~ N(0, 1) on every call (the authors' behaviour; average several passes at test time);
      "mean" a deterministic single pass: z is replaced by E[softplus(μ + ε)] (the expected multiplier);
      "off"  identity.

    `backend` picks the implementation: "auto" (fused C kernels on CPU float32, else eager), "fused", "eager",
    or None (default) to follow `mp_hub.kernels.set_default_backend`; see `mp_hub.kernels`.

    dtypes: x may be float16, bfloat16, float32 or float64 whatever φ's dtype; φ's math runs in float32 (float64
    for a float64 x, see COMPUTE_DTYPES), also under torch.autocast, and y has x's dtype. Half inputs therefore
    take the fused kernels too. The site's buffers stay float32 when the module is converted to float16 or
    bfloat16 (`model.half()`; `.double()` converts them): a half φ is cast to float32 in the math (its gradient
    comes back in its own dtype) and then runs on the eager path.

    `fused_relu`: the site also applies the ReLU that follows it (y ↦ max(y, 0), in every mode, "off" included).
    `mp_hub.attach` sets it where a site feeds a ReLU module, which then passes its input through: the same
    output and gradients, one elementwise pass less forward and backward.
    """

    def __init__(
        self,
        phi: MetaPerturb,
        channels: int,
        *,
        spatial_norm: float,
        channel_norm: float | None = None,
        noise_coeff: float = 1.0,
        clip_value: float | None = None,
        momentum: float = 0.1,
        inference_mode: str = "mc",
        backend: str | None = None,
    ):
        super().__init__()
        if not isinstance(phi, MetaPerturb):
            raise ConfigError(f"phi must be a MetaPerturb, got {type(phi).__name__}")
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be a positive int, got {channels!r}")
        if spatial_norm is None or not spatial_norm > 0:
            raise ConfigError(f"spatial_norm (H0, the model's input image size) must be > 0, got {spatial_norm!r}")
        self.__dict__["_phi"] = phi  # shared: kept out of this module's parameters and state_dict on purpose
        self.channels = channels
        self.spatial_norm = float(spatial_norm)
        self.channel_norm = float(channel_norm if channel_norm is not None else phi.config.channel_norm)
        if not self.channel_norm > 0:
            raise ConfigError(f"channel_norm (C0) must be > 0, got {self.channel_norm!r}")
        self.clip_value = float(clip_value if clip_value is not None else phi.config.clip_value)
        self.momentum = momentum
        h_dim = phi.config.h_dim
        self.register_buffer("running_mean", torch.zeros(channels, h_dim))
        self.register_buffer("running_var", torch.ones(channels, h_dim))
        self.register_buffer("noise_coeff", torch.tensor(1.0))
        self.set_noise_coeff(noise_coeff)
        self.inference_mode = "mc"
        self.set_inference_mode(inference_mode)
        self.backend = kernels.check_backend(backend)
        self.fused_relu = False
        self.input_repeat: InputRepeat | None = None  # set by repeating_first_input, for one batched MC pass

    def _apply(self, fn, recurse=True):
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():  # see HALF_DTYPES; from the value before, not a rounded one
            if buf is not None and buf.dtype in HALF_DTYPES:
                self._buffers[name] = before[name].to(device=buf.device, dtype=torch.float32)
        return self

    @property
    def phi(self) -> MetaPerturb:
        return self._phi

    def set_noise_coeff(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"noise_coeff κ must be in [0, 1], got {value!r}")
        self.noise_coeff.fill_(float(value))

    def set_backend(self, backend: str | None) -> None:
        """ "auto", "fused", "eager", or None to follow `mp_hub.kernels.set_default_backend` (see there)."""
        self.backend = kernels.check_backend(backend)

    def set_inference_mode(self, mode: str) -> None:
        if mode not in INFERENCE_MODES:
            raise ConfigError(f"inference_mode must be one of {INFERENCE_MODES}, got {mode!r}")
        self.inference_mode = mode

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, channel_norm={self.channel_norm:g}, spatial_norm={self.spatial_norm:g}, "
            f"clip_value={self.clip_value:g}, inference_mode={self.inference_mode!r}"
            + (", fused_relu=True" if self.fused_relu else "")
        )

    def _check_input(self, x: Tensor, noise: Tensor | None) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InvalidInputError(f"PerturbSite expects x of shape (B, C, H, W), got {shape}")
        if x.dtype not in COMPUTE_DTYPES:
            raise InvalidInputError(f"PerturbSite expects a floating-point x ({_SUPPORTED}), got {x.dtype}")
        if x.shape[1] != self.channels:
            raise InvalidInputError(f"this site was built for {self.channels} channels, x has {x.shape[1]}")
        if noise is not None and noise.shape != x.shape:
            raise InvalidInputError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
        if noise is not None and noise.dtype not in COMPUTE_DTYPES:
            raise InvalidInputError(f"noise must be a floating-point tensor ({_SUPPORTED}), got {noise.dtype}")

    def statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Feature mean/var for the scale: batch ones in training (updating the running ones), else running."""
        batch = x.shape[0]
        if not self.training or batch < 2:
            return self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        check_finite(x)
        mean, var = MF.batch_moments(self.phi.channel_scale.features(x))
        MF.update_running_stats(self.running_mean, self.running_var, mean, var, batch, self.momentum)
        return mean, var

    def scale(self, x: Tensor) -> Tensor:
        mean, var = self.statistics(x)
        return self.phi.channel_scale(
            mean, var, height=x.shape[-2], channel_norm=self.channel_norm, spatial_norm=self.spatial_norm
        )

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        self._check_input(x, noise)
        if self.input_repeat is not None and self.input_repeat.pending:
            x, noise = self.input_repeat.apply(x, noise)
        if self.inference_mode == "off":
            return F.relu(x) if self.fused_relu else x
        dtype = COMPUTE_DTYPES[x.dtype]
        with _autocast_off(x.device.type):  # autocast would run φ's convolutions in its lower precision
            y = self._perturb(x.to(dtype), None if noise is None else noise.to(dtype))
        return y.to(x.dtype)

    def _perturb(self, x: Tensor, noise: Tensor | None) -> Tensor:
        """forward's φ part, x and noise already in the compute dtype."""
        fast = kernels_for(self, x, noise)
        if fast is not None:
            return site_forward(self, fast, x, noise)
        mu = self.phi.noise_generator(x)
        scale = self.scale(x).to(x.dtype)
        if self.inference_mode == "mean":
            z = MF.expected_softplus(mu)
        else:
            z = F.softplus(mu + (torch.randn_like(mu) if noise is None else noise))
        # κ's value now, not the buffer: autograd saves it, and the buffer may be written before the backward
        kappa = self.noise_coeff.clone()
        y = MF.apply_perturbation(x, z, scale, kappa, self.clip_value)
        return F.relu(y) if self.fused_relu else y


def check_finite(x: Tensor) -> None:
    """Refuse a training batch with inf or nan (it would poison the running statistics) without a host sync: on
    CPU, eagerly, an `InvalidInputError` at once (reading a CPU tensor costs no sync); on an accelerator or under
    torch.compile, an asynchronous assert inside the graph, which fails the step where it runs (a RuntimeError on
    CPU, a device-side assert on CUDA)."""
    finite = torch.isfinite(x).all()
    if x.is_cpu and not torch.compiler.is_compiling():
        if not finite:
            raise InvalidInputError(NON_FINITE_MESSAGE)
        return
    torch._assert_async(finite, NON_FINITE_MESSAGE)


def _autocast_off(device_type: str):
    """A context that turns autocast off on this device type where it is on (a no-op elsewhere)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()
