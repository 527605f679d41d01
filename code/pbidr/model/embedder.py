"""IDR's positional encoding: the input followed by sin/cos at log-spaced frequencies.

gamma(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)], no pi factor, as in IDR,
so that a network trained with the original's ``multires`` sees the same features.
"""

from __future__ import annotations

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    """Maps (..., d_in) to (..., out_dim) with out_dim = d_in * (1 + 2 * multires).

    ``multires = 0`` is the identity (out_dim = d_in). The first ``d_in`` output channels are the raw
    input: the SDF network's geometric init relies on that to start from a function of x alone.
    """

    def __init__(self, multires: int, d_in: int = 3):
        super().__init__()
        if multires < 0:
            raise ValueError(f"multires must be >= 0, got {multires}")
        self.multires = int(multires)
        self.d_in = int(d_in)
        self.out_dim = self.d_in * (1 + 2 * self.multires)
        # Non-persistent: moves with .to(device) but stays out of checkpoints.
        self.register_buffer("freqs", 2.0 ** torch.arange(self.multires, dtype=torch.float32), persistent=False)
        # Per-band weights of the coarse-to-fine schedule (all ones = the plain encoding); derived
        # from the training step, so not persistent either.
        self.register_buffer("window", torch.ones(self.multires), persistent=False)

    def set_bandwidth(self, alpha: float | None) -> None:
        """Open the frequency bands coarse to fine (BARF, Lin et al. 2021): band k gets weight
        (1 - cos(pi * clamp(alpha - k, 0, 1))) / 2, so ``alpha = 0`` keeps only the raw input and
        ``alpha >= multires`` (or None) is the plain encoding."""
        if self.multires == 0:
            return
        if alpha is None:
            self.window.fill_(1.0)
            return
        k = torch.arange(self.multires, dtype=torch.float32, device=self.window.device)
        t = (float(alpha) - k).clamp(0.0, 1.0)
        self.window.copy_((1.0 - torch.cos(torch.pi * t)) / 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multires == 0:
            return x
        scaled = x.unsqueeze(-2) * self.freqs.to(x.dtype).unsqueeze(-1)  # (..., L, d_in)
        # Per frequency [sin (d_in), cos (d_in)], frequencies in increasing order: IDR's channel order.
        periodic = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # (..., L, 2, d_in)
        periodic = periodic * self.window.to(x.dtype)[:, None, None]
        return torch.cat([x, periodic.flatten(-3)], dim=-1)


def get_embedder(multires: int, d_in: int = 3) -> tuple[PositionalEncoding, int]:
    """The encoding module and its output width (IDR's ``get_embedder`` signature)."""
    enc = PositionalEncoding(multires, d_in)
    return enc, enc.out_dim
