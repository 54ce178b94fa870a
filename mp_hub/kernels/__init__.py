"""Fast paths of `PerturbSite`: fused C kernels (CPU, float32) with the eager `functional` path as fallback.

Backends:
  "auto"  (default) the fused kernels where they apply — CPU, float32, 3×3 kernels, not under a torch.func
          transform — else the eager path, silently. Under torch.compile they run as the custom ops of `ops.py`.
  "fused" the same, but a call the kernels cannot serve logs a warning (once per reason) before falling back.
  "eager" always the straightforward op-by-op path of `mp_hub.functional` (the authors' formulation).
Choose globally with `set_default_backend(...)` or the environment variable `MP_HUB_SITE_BACKEND`, or per site
with `PerturbSite(..., backend=...)` / `site.set_backend(...)`.

Why "auto" can be the default: the kernels are plain C (no torch headers) built with the system compiler on
first use, ~2 s, and cached under ~/.cache/mp_hub/kernels (`$MP_HUB_KERNEL_CACHE`), so a fresh CI machine pays
2 s once; without a compiler the build fails once, logs a warning and everything runs eager.

Both paths compute the same function: outputs, running statistics and gradients (wrt x and φ) agree to float32
rounding (tests/kernels/test_fused.py), and the authors' reference vectors pass through either to 1e-5. One
documented difference: with `noise=None` in "mc" mode the fused path draws ε from its own counter-based
generator — Box–Muller on random words from ARS-7 (AES rounds, with VAES) or a 2-round integer hash (without),
keyed from torch's default generator, so `torch.manual_seed` still makes runs reproducible — not from
`torch.randn`; its backward regenerates the same draws instead of storing them (`fused.py`).
"""

from __future__ import annotations

import os

from ..errors import ConfigError

BACKENDS = ("auto", "eager", "fused")
_default = {"backend": os.environ.get("MP_HUB_SITE_BACKEND", "auto").strip().lower() or "auto"}


def check_backend(name: str | None, *, allow_none: bool = True) -> str | None:
    if name is None and allow_none:
        return None
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_default_backend(name: str) -> None:
    """The backend of every site whose own `backend` is None."""
    _default["backend"] = check_backend(name, allow_none=False)


def get_default_backend() -> str:
    if _default["backend"] not in BACKENDS:  # a bad environment value: say so where it is used
        raise ConfigError(f"MP_HUB_SITE_BACKEND must be one of {BACKENDS}, got {_default['backend']!r}")
    return _default["backend"]


def fused_available() -> bool:
    """Whether the fused kernels can be built and loaded here (builds them on the first call)."""
    from .build import load

    return load() is not None


__all__ = ["BACKENDS", "fused_available", "get_default_backend", "set_default_backend"]
