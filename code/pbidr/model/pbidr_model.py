"""PBIDR's model: IDR geometry (SDF network, ray tracer, sample network) with PBIDR's appearance
decomposition rgb = diffuse(coarse normal) * albedo(x, feature) + specular(SDF normal, view).

All coordinates are in the normalised frame (object inside the unit bounding sphere). The coarse
mesh's hits (``mesh_*`` in :class:`RayBatch`) come from the data side (Embree), one per ray.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from pbidr.detail.field import DisplacementMapConfig
from pbidr.model.fields import PARAMETERISATIONS, SDFNetworkConfig, make_sdf_field  # noqa: F401 (re-exported)
from pbidr.model.ray_tracing import RayTracerConfig, TraceResult
from pbidr.model.sample_network import sample_network
from pbidr.model.shading import (AlbedoNetworkConfig, DiffuseNetworkConfig, SpecularNetworkConfig,
                                 make_shading_networks)
from pbidr.model.tracer import make_tracer
from pbidr.utils.config import Config, block, setting


@dataclass
class ModelConfig(Config):
    """The ``model`` conf block. Defaults are the original PBIDR's (its confs/test.conf), under clearer
    names: implicit_network -> sdf_network, the albedo and diffuse networks' multires_view -> multires."""

    feature_vector_size: int = setting(256, "length of the SDF network's feature vector (the albedo's input)")
    sdf_network: SDFNetworkConfig = block(SDFNetworkConfig, "the geometry field")
    diffuse_normal: str = setting("coarse", "normal the diffuse shading sees: coarse (PBIDR: the coarse mesh's) "
                                            "or sdf (the SDF's)", choices=("coarse", "sdf"))
    displacement_map: DisplacementMapConfig = block(DisplacementMapConfig, "the displacement_map parameterisation's map")
    diffuse_network: DiffuseNetworkConfig = block(DiffuseNetworkConfig, "diffuse shading network")
    specular_network: SpecularNetworkConfig = block(SpecularNetworkConfig, "specular shading network")
    albedo_network: AlbedoNetworkConfig = block(AlbedoNetworkConfig, "albedo network")
    ray_tracer: RayTracerConfig = block(lambda: RayTracerConfig(line_step_iters=3), "the ray tracer")
    eikonal_uniform_ratio: float = setting(0.5, "uniform eikonal samples per ray in the cube [-r, r]^3 "
                                                "(r = object_bounding_sphere); the traced points count too (IDR: 0.5)")
    second_surface_pass: bool = setting(False, "true: re-evaluate feature and normal at the differentiable "
                                               "surface point (IDR, one more SDF pass); false: reuse those at x0")
    sdf_chunk: int = setting(8192, "most points per SDF call in the tracer (memory knob; 8192 keeps a 512-wide "
                                   "layer in a CPU's caches, a GPU may prefer more)", positive=True)
    residual_lowpass_radius: float = setting(0.05, "coarse_residual: radius (normalised units) of the discs the "
                                                   "residual_lowpass loss averages over", positive=True)
    residual_lowpass_points: int = setting(0, "coarse_residual: coarse-mesh hits per batch the residual_lowpass "
                                              "loss samples discs around (0: off)")
    residual_lowpass_samples: int = setting(8, "samples per disc", positive=True)
    albedo_smoothness_step: float = setting(0.0, "> 0: the albedo_smoothness loss compares the albedo at each "
                                                 "surface point with the albedo this far along a tangent (0: off)")


@dataclass
class RayBatch:
    """N rays in the normalised frame; rays of several cameras may be mixed.

    origins: (N, 3) camera centres.
    dirs: (N, 3) unit directions.
    object_mask: (N,) bool ground-truth silhouette; required by ``forward`` (training), unused by
        ``render_eval`` (may be None there).
    mesh_hit: (N,) bool, the ray hits the coarse mesh.
    mesh_points: (N, 3) first hit on the coarse mesh (any value where ``mesh_hit`` is False).
    mesh_normals: (N, 3) unit barycentric-interpolated vertex normal at that hit.
    """

    origins: torch.Tensor
    dirs: torch.Tensor
    object_mask: Optional[torch.Tensor]
    mesh_hit: torch.Tensor
    mesh_points: torch.Tensor
    mesh_normals: torch.Tensor

    @property
    def n_rays(self) -> int:
        return self.origins.shape[0]

    def mesh_depth(self) -> torch.Tensor:
        """(N,) distance along the (unit) ray of the coarse mesh's first hit; inf where it misses."""
        depth = ((self.mesh_points - self.origins) * self.dirs).sum(-1)
        return torch.where(self.mesh_hit.reshape(-1).bool(), depth, torch.full_like(depth, float("inf")))

    def to(self, device: torch.device | str) -> "RayBatch":
        return RayBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                           for f in fields(self)})

    def __getitem__(self, index: Any) -> "RayBatch":
        """Rays selected by a slice, index tensor or bool mask."""
        return RayBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                           for f in fields(self)})


@dataclass
class GeometrySupervision:
    """What the geometry losses compare, attached to the SDF's parameters. N rays, U uniform eikonal
    samples, P = rays in ``mesh_hit & surface_mask``.

    traced_sdf: (N,) SDF at the traced points: the mask loss uses it off ``surface_mask``.
    eikonal_gradients: (N + U, 3) SDF gradients at the eikonal samples (the traced points, then the
        uniform samples in the bounding cube).
    mesh_points: (P, 3) the coarse-mesh hits p_mesh of those rays (no gradient).
    mesh_pull_points: (P, 3) p' = p_mesh - grad f(p_mesh) f(p_mesh).
    mesh_pull_targets: (P, 3) the differentiable traced surface points of the same rays.
    sdf_normals: (P, 3) SDF gradient at those surface points (not normalised; the loss uses cosine).
    mesh_normals: (P, 3) coarse-mesh normals of the same rays.
    mesh_sdf: (P,) SDF at the coarse-mesh hits (the residual r there in coarse_residual mode).
    """

    traced_sdf: torch.Tensor
    eikonal_gradients: torch.Tensor
    mesh_points: torch.Tensor
    mesh_pull_points: torch.Tensor
    mesh_pull_targets: torch.Tensor
    sdf_normals: torch.Tensor
    mesh_normals: torch.Tensor
    mesh_sdf: torch.Tensor


@dataclass
class ModelOutput:
    """Training forward of N rays. K = rays in ``surface_mask``.

    rgb, diffuse, specular, albedo: (N, 3); rgb in [-1, 1], the rest in [0, 1]; zeros off the surface.
    normals: (N, 3) unit SDF normals at the surface points, zeros elsewhere.
    points: (N, 3) traced points (surface point, or min-SDF point for the mask loss), detached.
    dists: (N,) their distance along the ray.
    network_object_mask: (N,) bool, the ray hits the SDF surface.
    object_mask: (N,) bool, ground-truth silhouette.
    surface_mask: (N,) bool = network_object_mask & object_mask (where colour is rendered).
    surface_features: (K, F) the SDF's feature vectors at the surface points, detached (the albedo
        network's other input: the loss side's albedo prior evaluates it elsewhere with them).
    geometry: the geometry losses' inputs (eikonal, mask, mesh pull, normal, residual).
    n_sdf_evals: points the ray tracer evaluated (no grad).
    n_sdf_grad_evals: points evaluated with gradients in the training pass.
    n_trace_fallback: rays the mesh-guided tracer handed to the faithful one (0 in IDR mode).
    """

    rgb: torch.Tensor
    diffuse: torch.Tensor
    specular: torch.Tensor
    albedo: torch.Tensor
    normals: torch.Tensor
    points: torch.Tensor
    dists: torch.Tensor
    network_object_mask: torch.Tensor
    object_mask: torch.Tensor
    surface_mask: torch.Tensor
    surface_features: torch.Tensor
    geometry: GeometrySupervision
    n_sdf_evals: int
    n_sdf_grad_evals: int
    n_trace_fallback: int


@dataclass
class RenderOutput:
    """Evaluation render of N rays (detached). rgb (N, 3) in [-1, 1]; diffuse, specular, albedo (N, 3)
    in [0, 1]; normals (N, 3) unit; zeros where ``hit`` is False. points (N, 3), dists (N,) of hits."""

    rgb: torch.Tensor
    diffuse: torch.Tensor
    specular: torch.Tensor
    albedo: torch.Tensor
    normals: torch.Tensor
    points: torch.Tensor
    dists: torch.Tensor
    hit: torch.Tensor
    n_sdf_evals: int


@dataclass(frozen=True)
class TrainingSampling:
    """The training forward's sampling knobs of the ``model`` conf block (``ModelConfig`` has their docs);
    the priors' knobs are the loss side's (``pbidr.training.regularisers``)."""

    eikonal_uniform_ratio: float
    second_surface_pass: bool

    @classmethod
    def from_config(cls, conf: ModelConfig) -> "TrainingSampling":
        return cls(**{f.name: getattr(conf, f.name) for f in fields(cls)})


@dataclass
class _Shading:
    rgb: torch.Tensor
    diffuse: torch.Tensor
    specular: torch.Tensor
    albedo: torch.Tensor
    normals: torch.Tensor


@dataclass
class _NetworkPoints:
    """The training pass's one SDF evaluation, with gradients, and the differentiable surface points.

    sdf: (N + U + P,), grad: (N + U + P, 3) at [the N = ``n_traced`` traced points, U = ``n_uniform``
        uniform eikonal samples, the P coarse-mesh hits of the pull rays (``mesh_points`` (P, 3))].
    surface_index: (K,) the surface rays; surface_dirs (K, 3) their directions.
    surface_points: (K, 3) x(theta) (sample network); surface_feature (K, F), surface_grad (K, 3) there.
    n_grad_evals: points evaluated with gradients.
    """

    sdf: torch.Tensor
    grad: torch.Tensor
    n_traced: int
    n_uniform: int
    mesh_points: torch.Tensor
    surface_index: torch.Tensor
    surface_dirs: torch.Tensor
    surface_points: torch.Tensor
    surface_feature: torch.Tensor
    surface_grad: torch.Tensor
    n_grad_evals: int


def _to_unit_interval(raw: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(raw) + 1.0) / 2.0


def _scatter(n: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(n, C) zeros with ``values`` (K, C) at rows ``index`` (K,); differentiable w.r.t. values."""
    out = values.new_zeros((n,) + tuple(values.shape[1:]))
    return out.index_copy(0, index, values)


def _scattered(n: int, index: torch.Tensor, shading: _Shading) -> dict[str, torch.Tensor]:
    """The shading of K rays as the render outputs of n rays, by field name: rows ``index`` (K,) hold
    it, the others zeros."""
    return {f.name: _scatter(n, index, getattr(shading, f.name)) for f in fields(_Shading)}


class PBIDRModel(nn.Module):
    """Built from a :class:`ModelConfig` (None: the defaults)."""

    def __init__(self, conf: Optional[ModelConfig] = None):
        super().__init__()
        conf = ModelConfig() if conf is None else conf
        if not isinstance(conf, ModelConfig):
            raise TypeError(f"PBIDRModel takes a ModelConfig (pbidr.training.conf.model_config), not {type(conf).__name__}")
        self.conf = conf
        feature_dim = conf.feature_vector_size
        self.parameterisation = conf.sdf_network.parameterisation
        self.coarse_to_fine_iters = conf.sdf_network.coarse_to_fine_iters
        # Built in this order, the order of their initialisation's random draws and of the state_dict.
        self.sdf_network = make_sdf_field(conf.sdf_network, conf.displacement_map, feature_dim)
        self.diffuse_network, self.specular_network, self.albedo_network = make_shading_networks(
            conf.diffuse_network, conf.specular_network, conf.albedo_network, feature_dim)
        self.diffuse_normal = conf.diffuse_normal
        self.tracer = make_tracer(conf.ray_tracer, conf.sdf_chunk)
        self.sampling = TrainingSampling.from_config(conf)

    @property
    def ray_tracer_config(self) -> RayTracerConfig:
        """The ``ray_tracer`` block the tracer was built from."""
        return self.tracer.config

    # ------------------------------------------------------------------ coarse mesh and schedules
    @property
    def needs_coarse_mesh(self) -> bool:
        """The field is built on the coarse mesh (the residual and map fields), so it needs one attached."""
        return self.parameterisation in ("coarse_residual", "displacement_map")

    def attach_coarse_mesh(self, vertices, faces, normals=None, uv=None, face_uv=None, scale: float = 1.0) -> None:
        """The coarse mesh in the normalised frame (vertices (V, 3), faces (F, 3), optional unit vertex
        normals, UVs (uv (T, 2), face_uv (F, 3)) and ``scale``, world units per normalised unit), handed
        to the SDF field (``SDFField.attach_coarse_mesh``; IDR's sphere field ignores it)."""
        self.sdf_network.attach_coarse_mesh(vertices, faces, normals, uv, face_uv, scale)

    def set_step(self, step: int) -> None:
        """Training-step-driven schedules: the coarse-to-fine window of the SDF's encoding."""
        embed = self.sdf_network.embed
        if self.coarse_to_fine_iters > 0:
            embed.set_bandwidth(embed.multires * min(1.0, step / self.coarse_to_fine_iters))
        else:
            embed.set_bandwidth(None)

    # ------------------------------------------------------------------ tracing
    def trace(
        self, origins: torch.Tensor, dirs: torch.Tensor, object_mask: Optional[torch.Tensor],
        mesh_depth: Optional[torch.Tensor] = None,
    ) -> TraceResult:
        """Ray tracing on the current SDF, without gradients, with the SDF net in eval mode (as IDR).
        ``ray_tracer.mode`` picks the tracer (``model.tracer``): "idr" (faithful) or "mesh" (band
        search around ``mesh_depth`` (N,), inf where the ray misses the coarse mesh; faithful without it)."""
        was_training = self.sdf_network.training
        self.sdf_network.eval()
        try:
            # cached(): weight-normalised weights are computed once per trace, not once per SDF call.
            with torch.no_grad(), parametrize.cached():
                return self.tracer(self.sdf_network.sdf, origins, dirs, object_mask, mesh_depth)
        finally:
            self.sdf_network.train(was_training)

    # ------------------------------------------------------------------ shading
    def _shade(
        self, points: torch.Tensor, features: torch.Tensor, sdf_grads: torch.Tensor,
        dirs: torch.Tensor, mesh_normals: torch.Tensor,
    ) -> _Shading:
        """Colour of K surface points: points, dirs, mesh_normals (K, 3); features (K, F); sdf_grads (K, 3)."""
        normals = F.normalize(sdf_grads, dim=-1)
        # PBIDR shades the diffuse term with the coarse normal; "sdf" uses the SDF's own normal, so
        # the detail's shading is explained by the geometry (sound once the SDF's low frequencies are
        # pinned to the coarse mesh: model.sdf_network.parameterisation = coarse_residual).
        diffuse_in = normals if self.diffuse_normal == "sdf" else mesh_normals
        diffuse = _to_unit_interval(self.diffuse_network(diffuse_in)).expand(-1, 3)
        specular = _to_unit_interval(self.specular_network(normals, -dirs)).expand(-1, 3)
        albedo = self.albedo_at(points, features)
        rgb01 = diffuse * albedo + specular
        return _Shading(rgb=2.0 * rgb01 - 1.0, diffuse=diffuse, specular=specular, albedo=albedo, normals=normals)

    @staticmethod
    def _diffuse_input(batch: RayBatch) -> torch.Tensor:
        """Coarse normals, zero where the ray misses the coarse mesh."""
        return torch.where(batch.mesh_hit.unsqueeze(-1), batch.mesh_normals, torch.zeros_like(batch.mesh_normals))

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: RayBatch) -> ModelOutput:
        """Training forward (IDR + PBIDR terms): trace, the network points (one SDF pass and the sample
        network), shade, the mesh pull, then the outputs. Gradients of the
        SDF gradient are kept (create_graph) when the module is in training mode and grad is enabled."""
        if batch.object_mask is None:
            raise ValueError("PBIDRModel.forward needs batch.object_mask (use render_eval for rendering)")
        object_mask = batch.object_mask.reshape(-1).bool()
        mesh_hit = batch.mesh_hit.reshape(-1).bool()
        trace = self.trace(batch.origins, batch.dirs, object_mask, batch.mesh_depth())
        surface_mask = trace.hit & object_mask
        pull_mask = surface_mask & mesh_hit
        net = self._network_points(batch, trace, surface_mask, pull_mask)
        shading = self._shade(net.surface_points, net.surface_feature, net.surface_grad, net.surface_dirs,
                              self._diffuse_input(batch)[net.surface_index])
        pulled, mesh_sdf = self._mesh_pull(net)
        # The outputs' slices and scatters last, in this order: backward runs the graph's nodes by order
        # of creation, which fixes the order it sums the gradients of a tensor used several times;
        # runs stay bit-identical to those of the one-block forward this was split from.
        render = _scattered(batch.n_rays, net.surface_index, shading)
        return ModelOutput(
            **render, points=trace.points, dists=trace.dists, network_object_mask=trace.hit,
            object_mask=object_mask, surface_mask=surface_mask, surface_features=net.surface_feature.detach(),
            geometry=self._geometry_supervision(batch, net, pull_mask, pulled, mesh_sdf),
            n_sdf_evals=trace.n_sdf_evals, n_sdf_grad_evals=net.n_grad_evals, n_trace_fallback=trace.n_fallback,
        )

    def _network_points(self, batch: RayBatch, trace: TraceResult, surface_mask: torch.Tensor,
                        pull_mask: torch.Tensor) -> _NetworkPoints:
        """One SDF pass over [traced points (N), uniform eikonal samples (U), coarse-mesh hits of the
        ``pull_mask`` rays (P)], then the sample network's differentiable points of the ``surface_mask``
        rays (and, with ``second_surface_pass``, feature and gradient re-evaluated there)."""
        n = batch.n_rays
        uniform = self._eikonal_samples(n, batch.origins)
        mesh_points = batch.mesh_points[pull_mask]
        all_points = torch.cat([trace.points, uniform, mesh_points], dim=0)
        create_graph = self.training and torch.is_grad_enabled()
        sdf, feature, grad = self.sdf_network.sdf_feature_gradient(all_points, create_graph=create_graph)

        surf_idx = surface_mask.nonzero().squeeze(-1)
        surf_dirs = batch.dirs[surf_idx]
        surface_points = sample_network(trace.points[surf_idx], surf_dirs, sdf[surf_idx], grad[surf_idx])
        second_pass = self.sampling.second_surface_pass
        if second_pass and surf_idx.numel() > 0:
            # IDR's exact variant: feature and normal also depend on theta through x(theta).
            _, surf_feature, surf_grad = self.sdf_network.sdf_feature_gradient(surface_points, create_graph)
        else:
            surf_feature, surf_grad = feature[surf_idx], grad[surf_idx]
        return _NetworkPoints(
            sdf=sdf, grad=grad, n_traced=n, n_uniform=uniform.shape[0], mesh_points=mesh_points,
            surface_index=surf_idx, surface_dirs=surf_dirs, surface_points=surface_points,
            surface_feature=surf_feature, surface_grad=surf_grad,
            n_grad_evals=all_points.shape[0] + (surf_idx.numel() if second_pass else 0),
        )

    def _eikonal_samples(self, n_rays: int, like: torch.Tensor) -> torch.Tensor:
        """(U, 3) uniform eikonal samples in the cube [-r, r]^3 (r = object_bounding_sphere), U =
        round(eikonal_uniform_ratio * n_rays); device and dtype of ``like``."""
        r = self.ray_tracer_config.object_bounding_sphere
        n_uniform = int(round(self.sampling.eikonal_uniform_ratio * n_rays))
        return (torch.rand(n_uniform, 3, device=like.device, dtype=like.dtype) * 2.0 - 1.0) * r

    @staticmethod
    def _mesh_pull(net: _NetworkPoints) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse-mesh hits p pulled onto the SDF's zero level set, p' = p - grad f(p) f(p) (P, 3),
        and f(p) (P,)."""
        start = net.n_traced + net.n_uniform
        mesh_sdf = net.sdf[start:]
        mesh_grad = net.grad[start:]
        return net.mesh_points - mesh_grad * mesh_sdf.unsqueeze(-1), mesh_sdf

    @staticmethod
    def _geometry_supervision(batch: RayBatch, net: _NetworkPoints, pull_mask: torch.Tensor,
                              mesh_pull_points: torch.Tensor, mesh_sdf: torch.Tensor) -> GeometrySupervision:
        pull_in_surface = pull_mask[net.surface_index]
        return GeometrySupervision(
            traced_sdf=net.sdf[: net.n_traced],
            eikonal_gradients=net.grad[: net.n_traced + net.n_uniform],
            mesh_points=net.mesh_points,
            mesh_pull_points=mesh_pull_points,
            mesh_pull_targets=net.surface_points[pull_in_surface],
            sdf_normals=net.surface_grad[pull_in_surface],
            mesh_normals=batch.mesh_normals[pull_mask],
            mesh_sdf=mesh_sdf,
        )

    def albedo_at(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The albedo (K, 3) in [0, 1] at ``points`` (K, 3) with SDF ``features`` (K, F)."""
        return _to_unit_interval(self.albedo_network(points, features))

    # ------------------------------------------------------------------ evaluation render
    @torch.no_grad()
    def render_eval(self, batch: RayBatch, chunk: int = 4096) -> RenderOutput:
        """Render N rays in chunks of ``chunk`` rays (memory knob): eval-mode tracing (hits only), then
        colour decomposition at the hits. The object mask is not used."""
        n = batch.n_rays
        parts: list[RenderOutput] = []
        for s in range(0, n, max(int(chunk), 1)):
            parts.append(self._render_chunk(batch[s : s + chunk]))
        if not parts:
            z3 = batch.origins.new_zeros(0, 3)
            return RenderOutput(z3, z3, z3, z3, z3, z3, batch.origins.new_zeros(0),
                                torch.zeros(0, dtype=torch.bool, device=batch.origins.device), 0)
        cat = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(RenderOutput)
               if f.name != "n_sdf_evals"}
        return RenderOutput(**cat, n_sdf_evals=sum(p.n_sdf_evals for p in parts))

    def _render_chunk(self, batch: RayBatch) -> RenderOutput:
        trace = self.trace(batch.origins, batch.dirs, None, batch.mesh_depth())
        idx = trace.hit.nonzero().squeeze(-1)
        points = trace.points[idx]
        _, feature, grad = self.sdf_network.sdf_feature_gradient(points, create_graph=False)
        shading = self._shade(points, feature.detach(), grad.detach(), batch.dirs[idx],
                              self._diffuse_input(batch)[idx])
        return RenderOutput(**_scattered(batch.n_rays, idx, shading), points=trace.points, dists=trace.dists,
                            hit=trace.hit, n_sdf_evals=trace.n_sdf_evals + points.shape[0])
