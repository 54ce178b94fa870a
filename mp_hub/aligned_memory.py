"""Give a loaded model's parameters and buffers memory of torch's own allocator, aligned as it aligns.

transformers 5.x `from_pretrained` makes each weight a Parameter over the tensor it read from the memory-mapped
safetensors file, so the data sits at that tensor's file offset: 4-byte aligned at worst, not the 64 bytes of
torch's allocator. oneMKL's SSE4.2 / AVX kernels for small matrix products (a 1×1 convolution on a 1×1 feature
map, a classifier on a batch of two) add up in an order that depends on the operands' alignment, so on a CPU
where MKL takes those paths the reloaded model's outputs differ in the last bits from the model that was saved.
"""

from __future__ import annotations

import torch
from torch import nn

ALIGNMENT = 64  # bytes: torch's CPU allocator (and MKL's own allocations) align to this


def realign_tensors(model: nn.Module) -> int:
    """Move every parameter and buffer of `model` whose data is not `ALIGNMENT`-aligned into a fresh copy, in
    place (`.data`: the objects stay, so tied weights stay tied). Returns how many were moved."""
    moved = 0
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):  # each shared object once
            if tensor.numel() and tensor.data_ptr() % ALIGNMENT:
                tensor.data = tensor.detach().clone()  # clone keeps the strides of a dense tensor
                moved += 1
    return moved
