"""Solution to exercise 07: symmetric per-channel int8 quantization of a weight, and back."""

import torch


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per output channel (row): returns (q, scale)."""
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating tensor, got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    scale = weight.detach().abs().amax(dim=1).to(torch.float32) / 127
    # a zero row has scale 0: divide it by 1 instead, its entries are 0 anyway
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(weight.detach().to(torch.float32) / safe[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values q * scale[:, None]."""
    return q.to(torch.float32) * scale.to(torch.float32)[:, None]
