"""The SDF-field interface every geometry of the model implements, and the one factory that picks it.

A field maps points of the normalised frame to signed distances; the ray tracers, the sample
network, marching cubes and eval see only this interface, never which field it is:

* ``sphere`` (``SDFNetwork``): IDR's network with geometric init (the paper's);
* ``coarse_residual`` (``ResidualSDF``): d_coarse(x) + r(p(x)), a residual MLP on the coarse mesh;
* ``displacement_map`` (``pbidr.detail.field.MapSDF``): d_coarse(x) - D(uv(c(x))), a map on the
  coarse mesh's UV chart, fitted on every texel (``train.solver = texels``).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np
import torch

PARAMETERISATIONS = ("sphere", "coarse_residual", "displacement_map")


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


def make_sdf_field(sc: Any, feature_dim: int, conf: Any) -> torch.nn.Module:
    """The field of ``model.sdf_network`` (``sc``, with ``parameterisation``); ``conf`` is the model block."""
    param = sc.get_string("parameterisation")
    if param not in PARAMETERISATIONS:
        raise ValueError(f"model.sdf_network.parameterisation must be one of {PARAMETERISATIONS}, got {param!r}")
    if param == "displacement_map":
        from pbidr.detail.field import MapSDF
        from pbidr.detail.fit import grid_levels

        if feature_dim != 0:
            raise ValueError("model.feature_vector_size must be 0 with the displacement_map parameterisation "
                             "(the map has no feature vector)")
        mc = conf.get_config("displacement_map")
        if mc.get_int("finest_level") > mc.get_int("coarsest_level"):
            raise ValueError("model.displacement_map.finest_level must be <= coarsest_level")
        # resolution 0 (the texture's size) is resolved by the trainer before it builds the model and
        # saved in the run's conf; 8 only stands in when a conf is merely checked.
        res = mc.get_int("resolution") or 8
        return MapSDF(size=(res, res), levels=grid_levels(mc.get_int("finest_level"), mc.get_int("coarsest_level")),
                      max_displacement=mc.get_float("max_displacement"))
    if param == "coarse_residual":
        from pbidr.model.residual_sdf import ResidualSDF

        return ResidualSDF(
            feature_dim=feature_dim, dims=sc.get_list("dims"), skip_in=sc.get_list("skip_in"),
            multires=sc.get_int("multires"), weight_norm=sc.get_bool("weight_norm"), beta=sc.get_float("beta"),
            max_residual=sc.get_float("max_residual"), project=sc.get_bool("project"),
        )
    from pbidr.model.sdf_network import SDFNetwork

    return SDFNetwork(
        d_in=sc.get_int("d_in"), feature_dim=feature_dim, dims=sc.get_list("dims"), skip_in=sc.get_list("skip_in"),
        multires=sc.get_int("multires"), geometric_init=sc.get_bool("geometric_init"), bias=sc.get_float("bias"),
        weight_norm=sc.get_bool("weight_norm"), beta=sc.get_float("beta"),
    )
