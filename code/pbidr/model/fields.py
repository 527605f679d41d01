"""The SDF-field interface every geometry of the model implements, and the one factory that picks it.

A field maps points of the normalised frame to signed distances; the ray tracers, the sample
network, marching cubes and eval see only this interface, never which field it is:

* ``sphere`` (``SDFNetwork``): IDR's network with geometric init (the paper's);
* ``coarse_residual`` (``ResidualSDF``): d_coarse(x) + r(p(x)), a residual MLP on the coarse mesh;
* ``displacement_map`` (``pbidr.detail.field.MapSDF``): d_coarse(x) - D(uv(c(x))), a map on the
  coarse mesh's UV chart, fitted on every texel (``train.solver = texels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch

from pbidr.detail.field import DisplacementMapConfig, MapSDF
from pbidr.detail.fit import grid_levels
from pbidr.model.residual_sdf import ResidualSDF
from pbidr.model.sdf_network import SDFNetwork
from pbidr.utils.config import Config, setting

PARAMETERISATIONS = ("sphere", "coarse_residual", "displacement_map")


@dataclass
class SDFNetworkConfig(Config):
    """``model.sdf_network``: which field, and the MLP's shape."""

    parameterisation: str = setting(
        "sphere", "sphere: IDR's network with geometric init (the paper's); coarse_residual: the coarse mesh's "
        "signed distance plus a residual MLP that starts at zero; displacement_map: the coarse distance minus a "
        "map on the coarse mesh's UV chart, fitted on every texel (train.solver = texels)", choices=PARAMETERISATIONS)
    max_residual: float = setting(0.02, "coarse_residual: bound of |r| (normalised units)", positive=True)
    project: bool = setting(True, "coarse_residual: r is read at x projected onto the coarse mesh's tangent plane "
                                  "(a displacement along the normal), not at x itself")
    coarse_to_fine_iters: int = setting(0, "> 0: the positional encoding's bands open coarse to fine over this "
                                           "many iterations (BARF)")
    d_in: int = setting(3, "input dimension (points)", choices=(3,))
    dims: list[int] = setting([512] * 8, "hidden layer widths", entries_positive=True)
    skip_in: list[int] = setting([4], "layers that get the input again (IDR's skip connection)")
    multires: int = setting(6, "positional-encoding frequencies of the point")
    geometric_init: bool = setting(True, "sphere: start as a sphere of radius bias (IDR's geometric init)")
    bias: float = setting(0.6, "sphere: radius of that initial sphere (normalised units)")
    weight_norm: bool = setting(True, "weight normalisation on every layer")
    beta: float = setting(100.0, "softplus sharpness of the activations", positive=True)


@runtime_checkable
class SDFField(Protocol):
    """What the tracer, the sample network, the renderer and eval use of a geometry field."""

    feature_dim: int
    #: marching cubes drops cells whose corner SDFs jump by more than this fraction of the cell
    #: without a zero crossing (a coarse-based field flips sign beyond an open border); None: keep all
    off_surface_tolerance: Optional[float]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3) -> (N, 1 + feature_dim): [sdf, feature]."""

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3) -> (N,)."""

    def sdf_feature_gradient(self, x: torch.Tensor, create_graph: bool = True
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sdf (N,), feature (N, F), grad_x sdf (N, 3)."""

    def gradient(self, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """grad_x sdf (N, 3)."""

    def attach_coarse_mesh(self, vertices: np.ndarray, faces: np.ndarray, normals: Optional[np.ndarray],
                           uv: Optional[np.ndarray], face_uv: Optional[np.ndarray], scale: float) -> None:
        """The coarse mesh in the normalised frame (a field that does not use it ignores it)."""


def make_sdf_field(sc: SDFNetworkConfig, dmap: DisplacementMapConfig, feature_dim: int) -> torch.nn.Module:
    """The field ``sc.parameterisation`` names (``dmap``: the displacement map's block)."""
    if sc.parameterisation == "displacement_map":
        if feature_dim != 0:
            raise ValueError("model.feature_vector_size must be 0 with the displacement_map parameterisation "
                             "(the map has no feature vector)")
        if dmap.finest_level > dmap.coarsest_level:
            raise ValueError("model.displacement_map.finest_level must be <= coarsest_level")
        # resolution 0 (the texture's size) is resolved by the trainer before it builds the model and
        # saved in the run's conf; 8 only stands in when a conf is merely checked.
        res = dmap.resolution or 8
        return MapSDF(size=(res, res), levels=grid_levels(dmap.finest_level, dmap.coarsest_level),
                      max_displacement=dmap.max_displacement)
    if sc.parameterisation == "coarse_residual":
        return ResidualSDF(feature_dim=feature_dim, dims=sc.dims, skip_in=sc.skip_in, multires=sc.multires,
                           weight_norm=sc.weight_norm, beta=sc.beta, max_residual=sc.max_residual, project=sc.project)
    return SDFNetwork(d_in=sc.d_in, feature_dim=feature_dim, dims=sc.dims, skip_in=sc.skip_in, multires=sc.multires,
                      geometric_init=sc.geometric_init, bias=sc.bias, weight_norm=sc.weight_norm, beta=sc.beta)
