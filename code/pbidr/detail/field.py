"""The displacement map as an SDF field: f(x) = d_coarse(x) - D(uv(c(x))) / s.

* ``d_coarse`` is the coarse mesh's exact signed distance (``pbidr.geometry.coarse_distance``), c the
  closest point, n the smooth normal there.
* ``uv(x)`` is the chart coordinate of x's tangent-plane projection p = c + (I - n n^T)(x - c):
  uv(c) from the closest triangle's UVs, plus the triangle's dual tangent basis applied to p - c, so
  the field's gradient is n - grad_s D / s (the detailed normal) and autograd sees it.
* D is the map in world units (mm for faces), ``DisplacementGrids``; s the normalised-to-world scale.

At a coarse vertex d_coarse = 0, so eval's ``-sdf`` there is D itself: the detailed mesh is the coarse
mesh moved by the map along its normals. The same interface as the other SDF fields
(``pbidr.model.fields.SDFField``), so the tracer, marching cubes and eval use it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pbidr.errors import PbidrError
from pbidr.geometry.coarse_distance import CoarseDistance
from pbidr.utils.config import Config, setting


@dataclass
class DisplacementMapConfig(Config):
    """``model.displacement_map``: the map of the displacement_map parameterisation."""

    resolution: int = setting(0, "texels per side (0: the texture's size, resolved when training starts)")
    finest_level: int = setting(1, "finest grid level: cells of 2^k texels (the levels finest..coarsest are summed)")
    coarsest_level: int = setting(5, "coarsest grid level")
    max_displacement: float = setting(5.0, "bound of |D| (world units, tanh)", positive=True)


class _NoEncoding:
    """Stands in for a positional encoding: the map has no frequency bands to open (its levels open
    in the texel objective)."""

    multires = 0

    def set_bandwidth(self, _bandwidth) -> None:
        return None


class MapSDF(nn.Module):
    """x (N, 3) in the normalised frame -> [f(x)] (N, 1); ``feature_dim`` must be 0."""

    def __init__(self, size: tuple[int, int], levels: list[int], max_displacement: float):
        super().__init__()
        from pbidr.detail.fit import DisplacementGrids

        self.grids = DisplacementGrids(size, levels, max_displacement)
        self.feature_dim = 0
        self.register_buffer("scale", torch.ones(()))  # world units per normalised unit (set on attach)
        # What the texel fit leaves besides D (refreshed at each checkpoint): the albedo map and the
        # light, [ambient, diffuse * direction] of a Lambert light (zeros before the first fit).
        self.register_buffer("albedo", torch.zeros(size[0], size[1], 3))
        self.register_buffer("light_coeffs", torch.zeros(4))
        self.register_buffer("light_kind", torch.tensor(-1))  # -1: lambert; -2: lambert2; k >= 0: poly of order k
        self.register_buffer("light_lobe", torch.zeros(5))  # [strength, half-vector (3), exponent]; 0: matte
        self.coarse: Optional[CoarseDistance] = None
        self._uv = None
        self._face_uv = None
        self._dual = None
        self.embed = _NoEncoding()

    off_surface_tolerance = 0.5  # the coarse distance flips sign beyond an open border without a zero

    # ------------------------------------------------------------------ coarse mesh
    def attach_coarse_mesh(self, vertices, faces, normals=None, uv=None, face_uv=None, scale: float = 1.0) -> None:
        """``SDFField``: the coarse mesh (normalised frame) with its UVs, and the world scale."""
        self.attach(CoarseDistance(vertices, faces, normals), uv, face_uv, scale)

    def attach(self, coarse: CoarseDistance, uv: np.ndarray, face_uv: np.ndarray, scale: float) -> None:
        """The coarse mesh (normalised frame) with its UVs; ``scale`` = world units per normalised unit."""
        from pbidr.detail.chart import dual_tangent_basis

        if uv is None or face_uv is None:
            raise PbidrError("the displacement-map SDF needs a coarse mesh with texture coordinates")
        self.coarse = coarse
        self._uv = np.asarray(uv, dtype=np.float64)
        self._face_uv = np.asarray(face_uv, dtype=np.int64)
        du, dv = dual_tangent_basis(coarse.vertices, coarse.faces, self._uv, self._face_uv)
        self._dual = np.stack([du, dv], axis=1)  # (F, 2, 3): d(u, v) = dual @ dP
        self.scale.fill_(float(scale))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "light_coeffs"
        if key in state_dict and state_dict[key].shape != self.light_coeffs.shape:  # a poly light's size
            self.light_coeffs = torch.zeros_like(state_dict[key])
        if key in state_dict and prefix + "light_lobe" not in state_dict:  # a run from before the lobe: matte
            state_dict[prefix + "light_lobe"] = torch.zeros_like(self.light_lobe)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_light(self, light) -> None:
        """Keep the fit's light (``pbidr.detail.fit.Light``); a poly light's coefficients resize the buffer."""
        self.light_kind.fill_({"lambert": -1, "lambert2": -2}.get(light.model, int(light.order)))
        coeffs = torch.as_tensor(np.asarray(light.coeffs, dtype=np.float32), device=self.light_coeffs.device)
        if coeffs.shape != self.light_coeffs.shape:
            self.light_coeffs = coeffs.clone()
        else:
            self.light_coeffs.copy_(coeffs)
        lobe = np.zeros(5) if light.lobe is None else np.asarray(light.lobe, dtype=np.float64)
        self.light_lobe.copy_(torch.as_tensor(lobe, dtype=self.light_lobe.dtype))

    def _require(self) -> CoarseDistance:
        if self.coarse is None:
            raise PbidrError("the displacement-map SDF has no coarse mesh attached (PBIDRModel.attach_coarse_mesh)")
        return self.coarse

    def light(self):
        """The fit's light (``pbidr.detail.fit.Light``) as stored in the checkpoint."""
        from pbidr.detail.fit import Light

        kind = int(self.light_kind)
        lobe = self.light_lobe.detach().cpu().numpy().astype(np.float64)
        return Light(model={-1: "lambert", -2: "lambert2"}.get(kind, "poly"), order=max(kind, 1),
                     coeffs=self.light_coeffs.detach().cpu().numpy().astype(np.float64),
                     lobe=lobe if lobe[0] > 0 else None)

    def displacement(self) -> torch.Tensor:
        """D (H, W) in world units."""
        return self.grids()

    def sample_map(self, d_map: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear read of a map (H, W) or (H, W, C) at uv (N, 2) (texel centres as the chart)."""
        grid = torch.stack([uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0], dim=-1).view(1, -1, 1, 2)
        m = d_map.unsqueeze(0).unsqueeze(0) if d_map.dim() == 2 else d_map.permute(2, 0, 1).unsqueeze(0)
        out = F.grid_sample(m.to(uv.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out[0, :, :, 0].T  # (N, C)
        return out[:, 0] if d_map.dim() == 2 else out

    def _uv_at(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sdf of the coarse mesh (N,), uv (N, 2)) at x, both differentiable in x."""
        coarse = self._require()
        q = coarse.closest(x.detach().cpu().numpy())
        as_t = lambda a: torch.as_tensor(a, dtype=x.dtype).to(x.device, non_blocking=True)  # noqa: E731
        d, n, c = as_t(q.distance), as_t(q.normal), as_t(q.point)
        uv_c = as_t(np.einsum("nk,nkc->nc", q.bary, self._uv[self._face_uv[q.face]]))
        dual = as_t(self._dual[q.face])  # (N, 2, 3)
        x_const = x.detach()
        sdf = d + ((x - x_const) * n).sum(-1)  # value d, gradient n
        off = x - c
        tangential = off - (off * n).sum(-1, keepdim=True) * n
        uv = uv_c + torch.einsum("nij,nj->ni", dual, tangential)
        return sdf, uv

    # ------------------------------------------------------------------ the SDF-field interface
    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        d, uv = self._uv_at(x)
        return d - self.sample_map(self.displacement(), uv) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sdf(x).unsqueeze(-1)

    def sdf_feature_gradient(self, x: torch.Tensor, create_graph: bool = True):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            sdf = self.sdf(x)
            (grad,) = torch.autograd.grad(sdf, x, grad_outputs=torch.ones_like(sdf), create_graph=create_graph,
                                          retain_graph=True)
        return sdf, sdf.new_zeros(len(sdf), 0), grad

    def gradient(self, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        return self.sdf_feature_gradient(x, create_graph=create_graph)[2]
