"""The one factory of the ray tracer: ``model.ray_tracer.mode`` picks IDR's faithful tracer
(``ray_tracing.trace_rays``) or the mesh-guided one (``mesh_guided_tracing.trace_rays_mesh_guided``).

Both are functions of an SDF callable; the :class:`Tracer` built here holds what the conf fixes (the
``ray_tracer`` block and ``sdf_chunk``), so a caller hands it only the SDF and the rays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from pbidr.model.mesh_guided_tracing import trace_rays_mesh_guided
from pbidr.model.ray_tracing import RayTracerConfig, SDFCallable, TraceResult, trace_rays


@dataclass(frozen=True)
class Tracer:
    """The ray tracer of one model conf: ``config`` (``ray_tracer``), ``chunk`` (``sdf_chunk``, the
    largest number of points per SDF call)."""

    config: RayTracerConfig
    chunk: int

    def __call__(
        self, sdf: SDFCallable, origins: torch.Tensor, dirs: torch.Tensor, object_mask: Optional[torch.Tensor],
        mesh_depth: Optional[torch.Tensor] = None,
    ) -> TraceResult:
        """Trace N rays (origins, dirs (N, 3)) against the zero level set of ``sdf`` (M, 3) -> (M,).
        object_mask: (N,) bool silhouette (training) or None (evaluation: hits only). mesh_depth:
        (N,) depth of the coarse mesh's first hit, inf for a miss; the mesh mode searches a band
        around it, and without it traces as the faithful tracer."""
        if self.config.mode == "mesh" and mesh_depth is not None:
            return trace_rays_mesh_guided(sdf, origins, dirs, object_mask, mesh_depth, config=self.config, chunk=self.chunk)
        return trace_rays(sdf, origins, dirs, object_mask, config=self.config, chunk=self.chunk)


def make_tracer(config: RayTracerConfig, chunk: int) -> Tracer:
    """The tracer of ``model.ray_tracer`` (``config``), evaluating at most ``chunk`` (``model.sdf_chunk``)
    points per SDF call."""
    return Tracer(config=config, chunk=chunk)
