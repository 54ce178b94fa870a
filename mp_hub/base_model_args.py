"""The arguments `load_perturbed` passes to the base model's `from_pretrained`, checked before anything is read:
`dtype` (or its alias `torch_dtype`) and `device_map`, as transformers takes them, else a `ConfigError` naming the
argument (not a `CheckpointError` from deep inside the load)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError

_DTYPES = "a floating torch.dtype (torch.bfloat16, ...) or its name ('bfloat16', 'torch.bfloat16')"


def _named_dtype(value: Any) -> torch.dtype | None:
    """`value` as a floating torch.dtype ('float16', 'torch.float16' and 'half' are torch.float16), else None."""
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _checked_dtype(argument: str, value: Any) -> Any:
    """`dtype` / `torch_dtype` as transformers' `from_pretrained` takes it (a floating torch.dtype, its name, 'auto',
    or a dict of dtypes per sub-config), a name read as its torch.dtype: two spellings of one dtype compare equal.
    Else a `ConfigError` naming the argument."""
    if value is None or isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, dict):
        named = {key: _named_dtype(v) for key, v in value.items()}
        for key, dtype in named.items():
            if dtype is None:
                raise ConfigError(
                    f"{argument}={value!r} gives {key!r} {value[key]!r}, not a dtype to load a model in: a dict "
                    f"of dtypes per sub-config ('' the main one) takes {_DTYPES}"
                )
        return named
    dtype = _named_dtype(value)
    if dtype is None:
        raise ConfigError(f"{argument}={value!r} is not a dtype to load a model in: pass {_DTYPES}, or 'auto'")
    return dtype


def resolve_dtype(dtype: Any, torch_dtype: Any) -> Any:
    """transformers 5 calls it `dtype` and still takes `torch_dtype`: either, not two different ones (two spellings
    of one dtype, torch.float16 and 'float16', are one)."""
    named, torch_named = _checked_dtype("dtype", dtype), _checked_dtype("torch_dtype", torch_dtype)
    if torch_dtype is not None and dtype is not None and torch_named != named:
        raise ConfigError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree: pass dtype only")
    return named if dtype is not None else torch_named


_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _is_device(value: Any) -> bool:
    """A torch.device, a device string torch parses ('cpu', 'cuda', 'cuda:0', 'meta') or a GPU index (an int >= 0),
    as transformers' `check_and_set_device_map` reads them."""
    if isinstance(value, torch.device):
        return True
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    if isinstance(value, str):
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            return False
        return True
    return False


def check_device_map(device_map: Any) -> None:
    """None, a strategy, a device or a dict of module names to devices (or 'disk'): what `from_pretrained` takes."""
    strategy = isinstance(device_map, str) and device_map in _DEVICE_MAP_STRATEGIES
    if device_map is None or strategy or _is_device(device_map):
        return
    if not isinstance(device_map, dict):
        raise ConfigError(
            f"device_map={device_map!r} is not a device map: pass {', '.join(map(repr, _DEVICE_MAP_STRATEGIES))}, "
            "a device ('cpu', 'cuda:0', a GPU index (an int >= 0), a torch.device) or a dict of module names to devices"
        )
    for key, device in device_map.items():
        if not isinstance(key, str):
            raise ConfigError(
                f"device_map={device_map!r} has the key {key!r}: its keys are module names ('' for the whole model)"
            )
        if not (isinstance(device, str) and device == "disk" or _is_device(device)):
            raise ConfigError(
                f"device_map={device_map!r} maps {key!r} to {device!r}, not a device ('cpu', 'cuda:0', a GPU index "
                "(an int >= 0), a torch.device) or 'disk'"
            )
