"""The geometry field: an MLP f(x) -> [sdf, feature], IDR's implicit network.

Softplus(beta) activations keep f smooth so that its gradient (the normal) and the eikonal term are
well defined; IDR's geometric init makes the fresh network approximately ||x|| - bias, the SDF of a
sphere of radius ``bias`` (negative inside), which the ray tracer needs to find a surface at step 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations

from pbidr.model.embedder import PositionalEncoding


def make_linear(d_in: int, d_out: int, weight_norm: bool, init=None) -> nn.Linear:
    """A linear layer, initialised by ``init(layer)`` (if given) *before* weight normalisation so
    that the normalised layer computes exactly the initialised function."""
    lin = nn.Linear(d_in, d_out)
    if init is not None:
        init(lin)
    if weight_norm:
        lin = parametrizations.weight_norm(lin)
    return lin


class SDFNetwork(nn.Module):
    """x (N, d_in) -> (N, 1 + feature_dim): column 0 is the signed distance, the rest the feature
    vector that conditions the albedo network.

    ``dims`` are the hidden widths; layer l+1 in ``skip_in`` receives [h, gamma(x)] / sqrt(2) (the
    division keeps the activation scale of a plain layer).
    """

    off_surface_tolerance = None  # a free SDF's sign changes only through zero

    def attach_coarse_mesh(self, vertices, faces, normals=None, uv=None, face_uv=None, scale: float = 1.0) -> None:
        """``SDFField``: IDR's field does not use the coarse mesh."""

    def __init__(
        self,
        d_in: int = 3,
        feature_dim: int = 256,
        dims: Sequence[int] = (512,) * 8,
        skip_in: Sequence[int] = (4,),
        multires: int = 6,
        geometric_init: bool = True,
        bias: float = 0.6,
        weight_norm: bool = True,
        beta: float = 100.0,
    ):
        super().__init__()
        self.d_in = int(d_in)
        self.feature_dim = int(feature_dim)
        self.skip_in = tuple(int(s) for s in skip_in)
        self.embed = PositionalEncoding(multires, d_in)
        widths = [self.embed.out_dim] + [int(d) for d in dims] + [1 + self.feature_dim]
        self.n_linear = len(widths) - 1
        for s in self.skip_in:
            if not 0 < s < self.n_linear:
                raise ValueError(f"skip_in entry {s} must index a hidden layer in 1..{self.n_linear - 1}")
        d_embed = widths[0]

        layers = []
        for l in range(self.n_linear):
            # The layer feeding a skip produces width - d_embed so the concatenation has the nominal width.
            out_dim = widths[l + 1] - d_embed if (l + 1) in self.skip_in else widths[l + 1]
            if out_dim < 1:
                raise ValueError(f"sdf_network: layer {l + 1} takes the skip connection, so its width "
                                 f"{widths[l + 1]} must exceed the encoding's {d_embed} channels (multires {multires})")
            in_dim = widths[l]
            init = None
            if geometric_init:
                init = self._geometric_init(l, in_dim, out_dim, d_embed, multires, bias)
            layers.append(make_linear(in_dim, out_dim, weight_norm, init))
        self.layers = nn.ModuleList(layers)
        self.activation = nn.Softplus(beta=beta)

    def _geometric_init(self, l: int, in_dim: int, out_dim: int, d_embed: int, multires: int, bias: float):
        """IDR's init (Atzmon & Lipman, SAL): hidden layers ~ N(0, 2/out_dim), last layer a constant
        positive weight with bias -bias. Encoded (sin/cos) channels start at zero so that the fresh
        network depends on raw x only and is ~ ||x|| - bias."""
        last = l == self.n_linear - 1
        n_periodic = d_embed - self.d_in

        def init(lin: nn.Linear) -> None:
            with torch.no_grad():
                if last:
                    lin.weight.normal_(math.sqrt(math.pi) / math.sqrt(in_dim), 1e-4)
                    lin.bias.fill_(-bias)
                    return
                lin.bias.zero_()
                lin.weight.normal_(0.0, math.sqrt(2.0) / math.sqrt(out_dim))
                if multires > 0 and l == 0:
                    lin.weight[:, self.d_in :].zero_()
                elif multires > 0 and l in self.skip_in:
                    # The concatenated input ends with gamma(x) = [x, periodic]; silence the periodic part.
                    lin.weight[:, in_dim - n_periodic :].zero_()

        return init

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Activations entering the last layer, (N, dims[-1])."""
        gamma = self.embed(x)
        h = gamma
        for l in range(self.n_linear - 1):
            if l in self.skip_in:
                h = torch.cat([h, gamma], dim=-1) / math.sqrt(2.0)
            h = self.activation(self.layers[l](h))
        if (self.n_linear - 1) in self.skip_in:
            h = torch.cat([h, gamma], dim=-1) / math.sqrt(2.0)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, d_in) -> (N, 1 + feature_dim) = [sdf, feature]."""
        return self.layers[-1](self._trunk(x))

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, d_in) -> sdf (N,). Computes only the sdf row of the last layer: the ray tracer calls
        this millions of times and never needs the feature."""
        last = self.layers[-1]
        return F.linear(self._trunk(x), last.weight[:1], last.bias[:1]).squeeze(-1)

    def sdf_feature_gradient(
        self, x: torch.Tensor, create_graph: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass giving sdf (N,), feature (N, F) and grad_x sdf (N, 3).

        sdf and feature stay attached to the parameters (and to ``x`` if it requires grad).
        ``create_graph=True`` makes the gradient itself differentiable (eikonal, normal and specular
        terms in training); with False it is a plain tensor (rendering, sample-network input).
        Works under an outer ``torch.no_grad()``: gradients are enabled locally.
        """
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            out = self.forward(x)
            sdf = out[:, 0]
            (grad,) = torch.autograd.grad(
                sdf,
                x,
                grad_outputs=torch.ones_like(sdf),
                create_graph=create_graph,
                # The forward graph must survive for a later backward through sdf / feature.
                retain_graph=True,
            )
        return sdf, out[:, 1:], grad

    def gradient(self, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """grad_x sdf, (N, 3)."""
        return self.sdf_feature_gradient(x, create_graph=create_graph)[2]
