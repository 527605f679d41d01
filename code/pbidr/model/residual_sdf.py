"""The detail mode's geometry field: the coarse mesh's signed distance plus a learned residual.

    f(x) = d_coarse(x) + r(p(x)),   r = r_max * tanh(g(p) / r_max),   g an MLP (SDFNetwork) of p

* ``d_coarse`` is the exact signed distance to the coarse mesh (``pbidr.geometry.coarse_distance``),
  whose gradient is the coarse mesh's smooth normal n at the closest point c.
* ``p(x) = c + (I - n n^T)(x - c)`` is x projected onto the tangent plane at c: on the normal line of
  c it is c itself, so r is a *displacement along the coarse normal*, a function on the surface
  extended constantly along the normals. The zero level set is c - r(c) n (to first order): exactly
  the quantity eval reads off at the coarse vertices.
* The residual network starts at zero (its sdf output row is zeroed), so at step 0 f = d_coarse: the
  detailed mesh equals the coarse mesh and the SDF's normals are the coarse normals.
* ``r_max`` (``max_residual``, normalised units) bounds the residual, so the surface never leaves a
  band of known width around the coarse mesh (tracer band and marching-cubes band are sized by it).
* The positional encoding can open its frequency bands coarse to fine during training
  (``PositionalEncoding.set_bandwidth``; the trainer drives it from the step).

The same interface as ``SDFNetwork`` (forward, sdf, sdf_feature_gradient, gradient), so the tracer,
the sample network, the renderer and eval use either without knowing which.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from pbidr.errors import PbidrError
from pbidr.geometry.coarse_distance import CoarseDistance
from pbidr.model.sdf_network import SDFNetwork


class ResidualSDF(nn.Module):
    """x (N, 3) -> (N, 1 + feature_dim) = [d_coarse(x) + r(p(x)), feature(p(x))].

    The coarse mesh is not a parameter: ``attach_coarse`` sets it (the trainer and eval do, from the
    scan's mesh in the normalised frame), and a checkpoint holds only the residual network.
    """

    def __init__(
        self,
        feature_dim: int,
        dims: Sequence[int],
        skip_in: Sequence[int],
        multires: int,
        weight_norm: bool = True,
        beta: float = 100.0,
        max_residual: float = 0.02,
        project: bool = True,
    ):
        super().__init__()
        if not max_residual > 0:
            raise ValueError(f"model.sdf_network.max_residual must be positive, got {max_residual}")
        self.feature_dim = int(feature_dim)
        self.max_residual = float(max_residual)
        self.project = bool(project)
        self.residual = SDFNetwork(d_in=3, feature_dim=feature_dim, dims=dims, skip_in=skip_in, multires=multires,
                                   geometric_init=False, weight_norm=weight_norm, beta=beta)
        self._zero_sdf_row()
        self.coarse: Optional[CoarseDistance] = None

    def _zero_sdf_row(self) -> None:
        """r = 0 at init. With weight norm the row's magnitude g is zeroed (its direction v stays
        random, so g gets a gradient and v follows once g moves)."""
        last = self.residual.layers[-1]
        with torch.no_grad():
            if parametrize.is_parametrized(last, "weight"):
                last.parametrizations.weight.original0[0].zero_()
            else:
                last.weight[0].zero_()
            last.bias[0] = 0.0

    @property
    def embed(self):
        return self.residual.embed

    off_surface_tolerance = 0.5  # the coarse distance flips sign beyond an open border without a zero

    def attach_coarse(self, coarse: CoarseDistance) -> None:
        self.coarse = coarse

    def attach_coarse_mesh(self, vertices, faces, normals=None, uv=None, face_uv=None, scale: float = 1.0) -> None:
        """``SDFField``: the coarse mesh (normalised frame) under the residual."""
        self.attach_coarse(CoarseDistance(vertices, faces, normals))

    def _require_coarse(self) -> CoarseDistance:
        if self.coarse is None:
            raise PbidrError("the residual SDF has no coarse mesh attached (PBIDRModel.attach_coarse_mesh)")
        return self.coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, n, c = self._require_coarse()(x)
        p = self._project(x, n, c)
        out = self.residual(p)
        r = self.max_residual * torch.tanh(out[:, :1] / self.max_residual)
        return torch.cat([d.unsqueeze(-1) + r, out[:, 1:]], dim=-1)

    def _project(self, x: torch.Tensor, n: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not self.project:
            return x
        off = x - c
        return c + off - (off * n).sum(-1, keepdim=True) * n

    def residual_at(self, points: torch.Tensor) -> torch.Tensor:
        """r (N,) at points on (or near) the coarse mesh, with gradients to the parameters."""
        _, n, c = self._require_coarse()(points)
        out = self.residual.sdf(self._project(points, n, c))
        return self.max_residual * torch.tanh(out / self.max_residual)

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        d, n, c = self._require_coarse()(x)
        r = self.residual.sdf(self._project(x, n, c))
        return d + self.max_residual * torch.tanh(r / self.max_residual)

    def sdf_feature_gradient(
        self, x: torch.Tensor, create_graph: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``SDFNetwork.sdf_feature_gradient``: sdf (N,), feature (N, F), grad_x sdf (N, 3)."""
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            out = self.forward(x)
            sdf = out[:, 0]
            (grad,) = torch.autograd.grad(sdf, x, grad_outputs=torch.ones_like(sdf), create_graph=create_graph,
                                          retain_graph=True)
        return sdf, out[:, 1:], grad

    def gradient(self, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        return self.sdf_feature_gradient(x, create_graph=create_graph)[2]
