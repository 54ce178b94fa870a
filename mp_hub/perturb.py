"""φ: the MetaPerturb function (82 parameters at defaults), shared by every site, layer and channel.

φ holds parameters only. The state of an insertion point (running statistics, normalisers, κ) lives in
`PerturbSite`; the model's own weights θ live in the model. Hub I/O comes from `PhiHubMixin`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as MF
from .config import MetaPerturbConfig
from .convert import OFFICIAL_PROVENANCE, convert_official_state, load_official_state
from .hub import PhiHubMixin


class ChannelEquivariantOp(nn.Module):
    """CEO(x)_c = λ ⋆ x_c + γ ⋆ mean_c(x), one K×K kernel each."""

    def __init__(self, kernel_size: int = 3, init_std: float = 0.01):
        super().__init__()
        self.identity_kernel = nn.Parameter(torch.empty(1, 1, kernel_size, kernel_size))
        self.mean_kernel = nn.Parameter(torch.empty(1, 1, kernel_size, kernel_size))
        nn.init.normal_(self.identity_kernel, 0.0, init_std)
        nn.init.normal_(self.mean_kernel, 0.0, init_std)

    @property
    def kernels(self) -> tuple[Tensor, Tensor]:
        return self.identity_kernel, self.mean_kernel

    def forward(self, x: Tensor) -> Tensor:
        return MF.channel_equivariant(x, *self.kernels)


class NoiseGenerator(nn.Module):
    """x → μ = CEO₂(ReLU(CEO₁(x))), the input-dependent mean of the multiplicative noise."""

    def __init__(self, kernel_size: int = 3, init_std: float = 0.01):
        super().__init__()
        self.layer1 = ChannelEquivariantOp(kernel_size, init_std)
        self.layer2 = ChannelEquivariantOp(kernel_size, init_std)

    def forward(self, x: Tensor) -> Tensor:
        return MF.noise_mean(x, self.layer1.kernels, self.layer2.kernels)


class ChannelScale(nn.Module):
    """Batch statistics of h shared-kernel features → per-channel scale s = sigmoid(w · [...])."""

    def __init__(self, h_dim: int = 4, kernel_size: int = 3, init_std: float = 0.01):
        super().__init__()
        self.kernels = nn.Parameter(torch.empty(h_dim, 1, kernel_size, kernel_size))
        self.fc = nn.Linear(2 * h_dim + 2, 1, bias=False)
        nn.init.normal_(self.kernels, 0.0, init_std)
        nn.init.normal_(self.fc.weight, 0.0, init_std)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, h) spatially pooled ReLU responses."""
        return MF.scale_features(x, self.kernels)

    def forward(
        self, feature_mean: Tensor, feature_var: Tensor, *, height: int, channel_norm: float, spatial_norm: float
    ) -> Tensor:
        return MF.channel_scale(
            feature_mean,
            feature_var,
            self.fc.weight,
            height=height,
            channel_norm=channel_norm,
            spatial_norm=spatial_norm,
        )


class MetaPerturb(PhiHubMixin, nn.Module):
    """The meta-learned perturbation function φ = (noise generator, channel scale).

    >>> phi = MetaPerturb()                                   # authors' init, N(0, 0.01)
    >>> phi = MetaPerturb.from_pretrained("org/metaperturb-tinyimagenet")

    φ is applied through `PerturbSite`s (one per insertion point), which own the per-site state.
    """

    config_class = MetaPerturbConfig

    def __init__(self, config: MetaPerturbConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = MetaPerturbConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"pass either a config or keyword arguments, not both (got {sorted(kwargs)})")
        self.config = config
        self.noise_generator = NoiseGenerator(config.kernel_size, config.init_std)
        self.channel_scale = ChannelScale(config.h_dim, config.kernel_size, config.init_std)

    def extra_repr(self) -> str:
        return f"h_dim={self.config.h_dim}, kernel_size={self.config.kernel_size}, parameters={self.num_parameters()}"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_official(cls, path) -> MetaPerturb:
        """φ from the authors' released `perturb_750.pth` (read weights-only; names, shapes and 82 values checked),
        in eval mode."""
        phi = cls(MetaPerturbConfig(provenance=dict(OFFICIAL_PROVENANCE)))
        state = convert_official_state(load_official_state(path), phi.state_dict(), str(path))
        phi.load_state_dict(state, strict=True)
        phi.source_id = str(path)
        return phi.eval()
