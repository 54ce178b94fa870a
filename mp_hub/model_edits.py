"""The one way mp_hub changes a model: removable edits of a module's `forward`, and the key under which the
state it adds for a module (a site, a norm layer's calibration, a regularizer) is stored.

An edit is a callable `edit(call_next, *args, **kwargs)`. A *wrapper* sees the module's call and may change its
inputs and its output around `call_next` (the rest of the chain); a *replacement* computes the module's output
itself, with `call_next` being the module's own forward for the cases it leaves alone (the latest replacement
of a module computes; removing it brings back the one before). Sites and regularizers are wrappers; the fused
ReLU, a mean-mode calibration and the MC fit's norm layers are replacements.

A module's edits live in one `EditedForward` set as its instance `forward`: torch's own hooks still run around
it, `copy.deepcopy(model)` maps it to the copy's modules, and a forward that another library had set on the
instance before (e.g. accelerate's device hooks) is kept as the module's own. Every edit returns an `EditHandle`;
handles can be removed in any order, and a module with no edit left gets its forward back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

Edit = Callable[..., Any]  # edit(call_next, *args, **kwargs) -> the module's output


def module_key(name: str) -> str:
    """The key for module `name` in a ModuleDict that mp_hub adds to a model (saved files depend on it)."""
    return name.replace(".", "-")  # ModuleDict keys cannot hold dots


class EditedForward:
    """A module's instance `forward` while mp_hub edits it: its wrappers (first added innermost) around its
    latest replacement, or around its own forward."""

    def __init__(self, module: nn.Module, own: Callable[..., Any] | None):
        self.module = module
        self.own = own  # an instance forward found in place (another library's), else None: the class's
        self.wrappers: dict[int, Edit] = {}
        self.replacements: dict[int, Edit] = {}
        self.next_key = 0

    @property
    def replacement(self) -> Edit | None:
        """The replacement that computes the module's output now, if any."""
        return next(reversed(self.replacements.values()), None)

    def own_forward(self, *args, **kwargs):
        if self.own is not None:
            return self.own(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def innermost(self, *args, **kwargs):
        replacement = self.replacement
        if replacement is not None:
            return replacement(self.own_forward, *args, **kwargs)
        return self.own_forward(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        call = self.innermost
        for wrapper in self.wrappers.values():
            call = functools.partial(wrapper, call)
        return call(*args, **kwargs)

    def add(self, edits: dict[int, Edit], edit: Edit) -> EditHandle:
        key, self.next_key = self.next_key, self.next_key + 1
        edits[key] = edit
        return EditHandle(self, edits, key)

    def discard(self, edits: dict[int, Edit], key: int) -> None:
        edits.pop(key, None)
        module = self.module
        # gone only while it is still the module's forward: a forward set on top of it later keeps calling it
        if not self.wrappers and not self.replacements and module.__dict__.get("forward") is self:
            if self.own is None:
                del module.__dict__["forward"]
            else:
                module.forward = self.own


class EditHandle:
    """Undoes one edit (any order; a second `remove()` does nothing)."""

    def __init__(self, chain: EditedForward, edits: dict[int, Edit], key: int):
        self.chain, self.edits, self.key = chain, edits, key

    @property
    def module(self) -> nn.Module:
        return self.chain.module

    def remove(self) -> None:
        self.chain.discard(self.edits, self.key)


def edited_forward(module: nn.Module) -> EditedForward | None:
    """The module's edits, or None if mp_hub has not edited it."""
    chain = module.__dict__.get("forward")
    return chain if isinstance(chain, EditedForward) and chain.module is module else None


def _chain(module: nn.Module) -> EditedForward:
    chain = edited_forward(module)
    if chain is None:
        chain = EditedForward(module, module.__dict__.get("forward"))
        module.forward = chain
    return chain


def wrap_forward(module: nn.Module, edit: Edit) -> EditHandle:
    """Run `edit(call_next, *args, **kwargs)` on every call of `module`, outside the wrappers it already has."""
    chain = _chain(module)
    return chain.add(chain.wrappers, edit)


def replace_forward(module: nn.Module, edit: Edit) -> EditHandle:
    """Compute `module`'s output with `edit(own_forward, *args, **kwargs)` until the handle is removed."""
    chain = _chain(module)
    return chain.add(chain.replacements, edit)
