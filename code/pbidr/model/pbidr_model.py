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

from pbidr.model.conf_defaults import model_conf
from pbidr.model.fields import PARAMETERISATIONS, make_sdf_field  # noqa: F401 (PARAMETERISATIONS: re-exported)
from pbidr.model.ray_tracing import RayTracerConfig, TraceResult
from pbidr.model.sample_network import sample_network
from pbidr.model.shading import make_shading_networks
from pbidr.model.tracer import make_tracer


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
class ModelOutput:
    """Training forward of N rays. K = rays in ``surface_mask``, P = rays in ``mesh_hit & surface_mask``.

    rgb, diffuse, specular, albedo: (N, 3); rgb in [-1, 1], the rest in [0, 1]; zeros off the surface.
    normals: (N, 3) unit SDF normals at the surface points, zeros elsewhere.
    points: (N, 3) traced points (surface point, or min-SDF point for the mask loss), detached.
    dists: (N,) their distance along the ray.
    network_object_mask: (N,) bool, the ray hits the SDF surface.
    object_mask: (N,) bool, ground-truth silhouette.
    surface_mask: (N,) bool = network_object_mask & object_mask (where colour is rendered).
    sdf_output: (N,) SDF at ``points`` (attached): the mask loss uses it off ``surface_mask``.
    grad_theta: (M, 3) SDF gradients at the eikonal samples (the traced points and uniform samples).
    mesh_pull_points: (P, 3) p' = p_mesh - grad f(p_mesh) f(p_mesh).
    mesh_pull_targets: (P, 3) the differentiable traced surface points of the same rays.
    sdf_normals: (P, 3) SDF gradient at those surface points (not normalised; the loss uses cosine).
    mesh_normals_sel: (P, 3) coarse-mesh normals of the same rays.
    n_sdf_evals: points the ray tracer evaluated (no grad).
    n_sdf_grad_evals: points evaluated with gradients in the training pass.
    n_trace_fallback: rays the mesh-guided tracer handed to the faithful one (0 in IDR mode).
    mesh_sdf: (P,) SDF at the coarse-mesh hits (the residual r there in coarse_residual mode).
    residual_lowpass: (M,) local mean of the residual over discs of radius residual_lowpass_radius
        around M of those hits (empty unless residual_lowpass_points > 0 in coarse_residual mode).
    albedo_step: (K, 3) albedo difference between each surface point and a point
        albedo_smoothness_step away along a random tangent (empty when that step is 0).
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
    sdf_output: torch.Tensor
    grad_theta: torch.Tensor
    mesh_pull_points: torch.Tensor
    mesh_pull_targets: torch.Tensor
    sdf_normals: torch.Tensor
    mesh_normals_sel: torch.Tensor
    n_sdf_evals: int
    n_sdf_grad_evals: int
    n_trace_fallback: int = 0
    mesh_sdf: Optional[torch.Tensor] = None
    residual_lowpass: Optional[torch.Tensor] = None
    albedo_step: Optional[torch.Tensor] = None


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
    """The training forward's sampling knobs of the ``model`` conf block (see its comments)."""

    eikonal_uniform_ratio: float
    second_surface_pass: bool
    residual_lowpass_radius: float
    residual_lowpass_samples: int
    residual_lowpass_points: int
    albedo_smoothness_step: float

    @classmethod
    def from_conf(cls, conf: Any) -> "TrainingSampling":
        return cls(
            eikonal_uniform_ratio=conf.get_float("eikonal_uniform_ratio"),
            second_surface_pass=conf.get_bool("second_surface_pass"),
            residual_lowpass_radius=conf.get_float("residual_lowpass_radius"),
            residual_lowpass_samples=conf.get_int("residual_lowpass_samples"),
            residual_lowpass_points=conf.get_int("residual_lowpass_points"),
            albedo_smoothness_step=conf.get_float("albedo_smoothness_step"),
        )


@dataclass
class _Shading:
    rgb: torch.Tensor
    diffuse: torch.Tensor
    specular: torch.Tensor
    albedo: torch.Tensor
    normals: torch.Tensor


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
    """Built from the ``model`` conf block (see ``conf_defaults.DEFAULT_MODEL_CONF``); missing keys
    take the defaults."""

    def __init__(self, conf: Any = None):
        super().__init__()
        conf = model_conf(conf)
        self.conf = conf
        feature_dim = conf.get_int("feature_vector_size")
        sc = conf.get_config("sdf_network")
        self.parameterisation = sc.get_string("parameterisation")
        self.coarse_to_fine_iters = sc.get_int("coarse_to_fine_iters")
        # Built in this order, the order of their initialisation's random draws and of the state_dict.
        self.sdf_network = make_sdf_field(sc, feature_dim, conf)
        self.diffuse_network, self.specular_network, self.albedo_network = make_shading_networks(conf, feature_dim)
        self.diffuse_normal = conf.get_string("diffuse_normal")
        if self.diffuse_normal not in ("coarse", "sdf"):
            raise ValueError(f"model.diffuse_normal must be 'coarse' or 'sdf', got {self.diffuse_normal!r}")
        self.tracer = make_tracer(conf)
        self.sampling = TrainingSampling.from_conf(conf)

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
        albedo = _to_unit_interval(self.albedo_network(points, features))
        rgb01 = diffuse * albedo + specular
        return _Shading(rgb=2.0 * rgb01 - 1.0, diffuse=diffuse, specular=specular, albedo=albedo, normals=normals)

    @staticmethod
    def _diffuse_input(batch: RayBatch) -> torch.Tensor:
        """Coarse normals, zero where the ray misses the coarse mesh."""
        return torch.where(batch.mesh_hit.unsqueeze(-1), batch.mesh_normals, torch.zeros_like(batch.mesh_normals))

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: RayBatch) -> ModelOutput:
        """Training forward (IDR + PBIDR terms). Gradients of the SDF gradient are kept (create_graph)
        when the module is in training mode and grad is enabled."""
        if batch.object_mask is None:
            raise ValueError("PBIDRModel.forward needs batch.object_mask (use render_eval for rendering)")
        n = batch.n_rays
        device, dtype = batch.origins.device, batch.origins.dtype
        object_mask = batch.object_mask.reshape(-1).bool()
        mesh_hit = batch.mesh_hit.reshape(-1).bool()

        trace = self.trace(batch.origins, batch.dirs, object_mask, batch.mesh_depth())
        surface_mask = trace.hit & object_mask
        pull_mask = surface_mask & mesh_hit

        # One SDF pass over [traced points (N), uniform eikonal samples (U), coarse-mesh hits (P)].
        r = self.ray_tracer_config.object_bounding_sphere
        n_uniform = int(round(self.sampling.eikonal_uniform_ratio * n))
        uniform = (torch.rand(n_uniform, 3, device=device, dtype=dtype) * 2.0 - 1.0) * r
        mesh_points = batch.mesh_points[pull_mask]
        all_points = torch.cat([trace.points, uniform, mesh_points], dim=0)
        create_graph = self.training and torch.is_grad_enabled()
        sdf, feature, grad = self.sdf_network.sdf_feature_gradient(all_points, create_graph=create_graph)

        surf_idx = surface_mask.nonzero().squeeze(-1)
        surf_dirs = batch.dirs[surf_idx]
        surface_points = sample_network(trace.points[surf_idx], surf_dirs, sdf[surf_idx], grad[surf_idx])
        if self.sampling.second_surface_pass and surf_idx.numel() > 0:
            # IDR's exact variant: feature and normal also depend on theta through x(theta).
            _, surf_feature, surf_grad = self.sdf_network.sdf_feature_gradient(surface_points, create_graph)
        else:
            surf_feature, surf_grad = feature[surf_idx], grad[surf_idx]
        shading = self._shade(surface_points, surf_feature, surf_grad, surf_dirs, self._diffuse_input(batch)[surf_idx])

        mesh_sdf = sdf[n + n_uniform :]
        mesh_grad = grad[n + n_uniform :]
        pulled = mesh_points - mesh_grad * mesh_sdf.unsqueeze(-1)
        pull_in_surface = pull_mask[surf_idx]
        lowpass = self._residual_lowpass(mesh_points, batch.mesh_normals[pull_mask])
        albedo_step = self._albedo_step(surface_points.detach(), shading.normals.detach(), shading.albedo, surf_feature)

        return ModelOutput(
            **_scattered(n, surf_idx, shading),
            points=trace.points,
            dists=trace.dists,
            network_object_mask=trace.hit,
            object_mask=object_mask,
            surface_mask=surface_mask,
            sdf_output=sdf[:n],
            grad_theta=grad[: n + n_uniform],
            mesh_pull_points=pulled,
            mesh_pull_targets=surface_points[pull_in_surface],
            sdf_normals=surf_grad[pull_in_surface],
            mesh_normals_sel=batch.mesh_normals[pull_mask],
            n_sdf_evals=trace.n_sdf_evals,
            n_sdf_grad_evals=all_points.shape[0] + (surf_idx.numel() if self.sampling.second_surface_pass else 0),
            n_trace_fallback=trace.n_fallback,
            mesh_sdf=mesh_sdf,
            residual_lowpass=lowpass,
            albedo_step=albedo_step,
        )

    def _albedo_step(self, points: torch.Tensor, normals: torch.Tensor, albedo: torch.Tensor,
                     features: torch.Tensor) -> torch.Tensor:
        """Albedo (K, 3) minus the albedo a small tangent step away (Retinex prior: penalised in L1,
        albedo becomes piecewise constant and smooth shading variation is left to the geometry)."""
        step = self.sampling.albedo_smoothness_step
        if not step > 0 or points.shape[0] == 0:
            return albedo.new_zeros(0, 3)
        direction = F.normalize(torch.randn_like(points), dim=-1)
        tangent = F.normalize(direction - (direction * normals).sum(-1, keepdim=True) * normals, dim=-1)
        moved = points + step * tangent
        return albedo - _to_unit_interval(self.albedo_network(moved, features.detach()))

    def _residual_lowpass(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Local mean of the residual around up to ``residual_lowpass_points`` of ``points`` (P, 3) on
        the coarse mesh (unit ``normals`` (P, 3)): the centre and ``residual_lowpass_samples`` points
        drawn uniformly in the tangent disc of radius ``residual_lowpass_radius`` (projected back
        onto the mesh by the residual SDF). Penalising it keeps mm-scale drift out of the residual
        while leaving detail whose local mean is ~0 (wrinkles, bumps) free."""
        s = self.sampling
        if not (self.parameterisation == "coarse_residual" and s.residual_lowpass_points > 0
                and s.residual_lowpass_samples > 0) or len(points) == 0:
            return points.new_zeros(0)
        m = min(s.residual_lowpass_points, points.shape[0])
        pick = torch.randperm(points.shape[0], device=points.device)[:m]
        p, n = points[pick], normals[pick]
        helper = torch.where(n[:, :1].abs() < 0.9, torch.tensor([1.0, 0.0, 0.0], device=p.device, dtype=p.dtype),
                             torch.tensor([0.0, 1.0, 0.0], device=p.device, dtype=p.dtype))
        t1 = F.normalize(torch.cross(n, helper, dim=-1), dim=-1)
        t2 = torch.cross(n, t1, dim=-1)
        k = s.residual_lowpass_samples
        radius = s.residual_lowpass_radius * torch.sqrt(torch.rand(m, k, 1, device=p.device, dtype=p.dtype))
        angle = 2.0 * torch.pi * torch.rand(m, k, 1, device=p.device, dtype=p.dtype)
        offsets = radius * (torch.cos(angle) * t1[:, None] + torch.sin(angle) * t2[:, None])
        disc = torch.cat([p[:, None], p[:, None] + offsets], dim=1).reshape(-1, 3)
        return self.sdf_network.residual_at(disc).reshape(m, k + 1).mean(dim=1)

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
