"""The detail mode's priors, sampled on the loss side: random points where a prior compares the model with
itself, drawn after the model's training forward, from what it returned.

- **residual low-pass** (coarse_residual): the residual's local mean over discs around the coarse-mesh
  hits. Penalising it keeps mm-scale drift out of the residual while leaving detail whose local mean is
  ~0 (wrinkles, bumps) free.
- **albedo step**: the albedo's change over a small random tangent step at the surface points (a Retinex
  prior: penalised in L1, albedo becomes piecewise constant and smooth shading is left to the geometry).

Their knobs are ``model`` conf keys (``residual_lowpass_*``, ``albedo_smoothness_step``: saved runs keep
them there); their weights are ``loss`` keys. Both draw from torch's global RNG, right after the model's
forward (which draws nothing after its eikonal samples), in this order: runs draw as they always did.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch.nn import functional as F

from pbidr.model.pbidr_model import ModelConfig, ModelOutput, PBIDRModel


@dataclass
class RegulariserSamples:
    """The priors' samples; empty when off.

    residual_lowpass: (M,) local mean of the residual over discs of radius residual_lowpass_radius
        around M coarse-mesh hits (M > 0 only with residual_lowpass_points > 0 in coarse_residual mode).
    albedo_step: (K, 3) albedo difference between each surface point and a point
        albedo_smoothness_step away along a random tangent ((0, 3) when that step is 0).
    """

    residual_lowpass: torch.Tensor
    albedo_step: torch.Tensor


@dataclass(frozen=True)
class RegulariserSampling:
    """The sampling knobs of the ``model`` block (``ModelConfig`` has their docs)."""

    residual_lowpass_radius: float
    residual_lowpass_points: int
    residual_lowpass_samples: int
    albedo_smoothness_step: float

    @classmethod
    def from_config(cls, conf: ModelConfig) -> "RegulariserSampling":
        return cls(**{f.name: getattr(conf, f.name) for f in fields(cls)})


class RegulariserSampler:
    """Samples the priors of one model (its residual field and albedo network) from its training output."""

    def __init__(self, model: PBIDRModel):
        self.model = model
        self.sampling = RegulariserSampling.from_config(model.conf)

    def __call__(self, out: ModelOutput) -> RegulariserSamples:
        """The residual's local mean around the coarse-mesh hits, then the albedo's change over a random
        tangent step at the surface points."""
        geo = out.geometry
        lowpass = self.residual_lowpass(geo.mesh_points, geo.mesh_normals)
        return RegulariserSamples(residual_lowpass=lowpass, albedo_step=self.albedo_step(out))

    def albedo_step(self, out: ModelOutput) -> torch.Tensor:
        """Albedo (K, 3) at the K surface points minus the albedo a step along a random tangent away (the
        SDF normal's tangent plane, the same detached features). The surface rows are gathered only
        when the prior is on: the training step's default path does no work here."""
        step = self.sampling.albedo_smoothness_step
        if not step > 0:
            return out.albedo.new_zeros(0, 3)
        surface = out.surface_mask
        points, normals, albedo = out.points[surface], out.normals[surface].detach(), out.albedo[surface]
        if points.shape[0] == 0:
            return albedo.new_zeros(0, 3)
        direction = F.normalize(torch.randn_like(points), dim=-1)
        tangent = F.normalize(direction - (direction * normals).sum(-1, keepdim=True) * normals, dim=-1)
        return albedo - self.model.albedo_at(points + step * tangent, out.surface_features)

    def residual_lowpass(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Local mean of the residual around up to ``residual_lowpass_points`` of ``points`` (P, 3) on the
        coarse mesh (unit ``normals`` (P, 3)): the centre and ``residual_lowpass_samples`` points drawn
        uniformly in the tangent disc of radius ``residual_lowpass_radius`` (projected back onto the mesh
        by the residual field)."""
        s = self.sampling
        if not (self.model.parameterisation == "coarse_residual" and s.residual_lowpass_points > 0
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
        return self.model.sdf_network.residual_at(disc).reshape(m, k + 1).mean(dim=1)


def no_regularisers(like: torch.Tensor) -> RegulariserSamples:
    """Empty samples (every prior off), on ``like``'s device and dtype."""
    return RegulariserSamples(residual_lowpass=like.new_zeros(0), albedo_step=like.new_zeros(0, 3))
