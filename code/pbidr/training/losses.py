"""PBIDR's training loss: IDR's rgb, eikonal and mask terms plus the coarse-mesh pull and normal terms.

total = rgb_weight * L_rgb + eikonal_weight * L_eik + mask_weight * L_mask
        + mesh_pull_weight * L_pull + normal_weight * L_normal
        + residual_weight * L_residual + residual_lowpass_weight * L_lowpass
        + albedo_smoothness_weight * L_albedo_smoothness

The last three are the detail mode's regularisers (all 0 in the paper's conf): the mean squared SDF at
the coarse-mesh hits (the residual there), the mean squared local mean of the residual, and the mean
L1 albedo change over a small tangent step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pbidr.detail.fit import TexelConfig
from pbidr.model.pbidr_model import ModelOutput
from pbidr.training.regularisers import RegulariserSamples, no_regularisers
from pbidr.utils.config import Config, block, setting

_MESH_PULL_NORMS = ("l2sq", "l2", "l1")


@dataclass
class LossConfig(Config):
    """The ``loss`` block: the weights of the terms (see the module doc) and the mask loss's sharpness.
    Defaults are the original PBIDR's; its reg_weight is mesh_pull_weight here."""

    rgb_weight: float = setting(1.0, "L1 colour")
    eikonal_weight: float = setting(0.1, "eikonal (|grad f| = 1)")
    mask_weight: float = setting(100.0, "silhouette (IDR's mask loss)")
    mesh_pull_weight: float = setting(5.0, "distance between the mesh-pulled and the traced surface points "
                                           "(the original's reg_weight)")
    mesh_pull_norm: str = setting("l2sq", "l2sq (the original's mean squared distance) | l2 | l1",
                                  choices=_MESH_PULL_NORMS)
    mesh_pull_detach_target: bool = setting(False, "the pull compares against the detached traced point")
    normal_weight: float = setting(1.0, "1 - cos between SDF normals and the coarse mesh's")
    residual_weight: float = setting(0.0, "detail mode: mean squared SDF at the coarse-mesh hits")
    residual_lowpass_weight: float = setting(0.0, "detail mode: mean squared local mean of the residual "
                                                  "(model.residual_lowpass_*)")
    albedo_smoothness_weight: float = setting(0.0, "mean L1 albedo change over model.albedo_smoothness_step")
    texel: TexelConfig = block(TexelConfig, "train.solver = texels: the texel fit's energy")
    alpha: float = setting(50.0, "mask-loss sharpness at the start", positive=True)
    alpha_factor: float = setting(2.0, "alpha is multiplied by this at each milestone", positive=True)
    alpha_milestones: list[int] = setting([250, 500, 750, 1000, 1250], "epochs at which alpha grows")


@dataclass
class LossTerms:
    """0-dim tensors; ``total`` is the weighted sum, the others are unweighted."""

    total: torch.Tensor
    rgb: torch.Tensor
    eikonal: torch.Tensor
    mask: torch.Tensor
    mesh_pull: torch.Tensor
    normal: torch.Tensor
    residual: torch.Tensor
    residual_lowpass: torch.Tensor
    albedo_smoothness: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.__dict__.items()}


def alpha_at(
    step_or_epoch: int, alpha_init: float, alpha_factor: float, alpha_milestones: Sequence[int]
) -> float:
    """IDR's mask-loss sharpness schedule: alpha is multiplied by ``alpha_factor`` when the epoch
    reaches each milestone, so alpha(e) = alpha_init * factor ** #{m <= e}. Also right after resume."""
    passed = sum(1 for m in alpha_milestones if step_or_epoch >= m)
    return float(alpha_init) * float(alpha_factor) ** passed


def rgb_loss(rgb: torch.Tensor, rgb_gt: torch.Tensor, surface_mask: torch.Tensor) -> torch.Tensor:
    """L1 over surface rays, summed and divided by the number of rays N (IDR): rgb, rgb_gt (N, 3)."""
    n = surface_mask.shape[0]
    if not surface_mask.any():
        return rgb.new_zeros(())
    return (rgb[surface_mask] - rgb_gt.reshape(-1, 3)[surface_mask]).abs().sum() / float(n)


def eikonal_loss(grad_theta: torch.Tensor) -> torch.Tensor:
    """mean (||grad f|| - 1)^2 over (M, 3) gradients."""
    if grad_theta.shape[0] == 0:
        return grad_theta.new_zeros(())
    return ((grad_theta.norm(dim=-1) - 1.0) ** 2).mean()


def mask_loss(
    sdf_output: torch.Tensor, surface_mask: torch.Tensor, object_mask: torch.Tensor, alpha: float
) -> torch.Tensor:
    """IDR's silhouette term over rays not in surface_mask: BCE-with-logits of -alpha * sdf against
    the object mask, summed, divided by alpha and by the number of rays N. sdf_output (N,)."""
    sel = ~surface_mask
    if not sel.any():
        return sdf_output.new_zeros(())
    logits = -alpha * sdf_output.reshape(-1)[sel]
    target = object_mask.reshape(-1)[sel].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    return bce / alpha / float(surface_mask.shape[0])


def mesh_pull_loss(points: torch.Tensor, targets: torch.Tensor, norm: str = "l2sq") -> torch.Tensor:
    """Mean distance between mesh-pulled points and traced surface points, (P, 3) each.
    l2sq: squared Euclidean (the original's summed MSE / P); l2: Euclidean; l1: sum of |dx|."""
    if points.shape[0] == 0:
        return points.new_zeros(())
    diff = points - targets
    if norm == "l2sq":
        return (diff * diff).sum(-1).mean()
    if norm == "l2":
        return diff.norm(dim=-1).mean()
    if norm == "l1":
        return diff.abs().sum(-1).mean()
    raise ValueError(f"mesh_pull_norm must be one of {_MESH_PULL_NORMS}, got {norm!r}")


def normal_loss(sdf_normals: torch.Tensor, mesh_normals: torch.Tensor) -> torch.Tensor:
    """mean (1 - cos) between SDF gradients and coarse-mesh normals, (P, 3) each."""
    if sdf_normals.shape[0] == 0:
        return sdf_normals.new_zeros(())
    return (1.0 - F.cosine_similarity(sdf_normals, mesh_normals, dim=-1)).mean()


def _mean_square(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """mean(x^2), 0 for an empty x."""
    if x.numel() == 0:
        return like.new_zeros(())
    return (x * x).mean()


class PBIDRLoss(nn.Module):
    """Built from a :class:`LossConfig` (None: the defaults).

    ``alpha`` (mask-loss sharpness) is a plain attribute: set it per epoch with
    ``loss.alpha = loss.alpha_for(epoch)``, or pass ``alpha=`` to ``forward``.
    """

    def __init__(self, conf: Optional[LossConfig] = None):
        super().__init__()
        conf = LossConfig() if conf is None else conf
        if not isinstance(conf, LossConfig):
            raise TypeError(f"PBIDRLoss takes a LossConfig (pbidr.training.conf.loss_config), not {type(conf).__name__}")
        self.conf = conf
        self.alpha = conf.alpha

    def alpha_for(self, epoch: int) -> float:
        return alpha_at(epoch, self.conf.alpha, self.conf.alpha_factor, self.conf.alpha_milestones)

    def forward(self, out: ModelOutput, rgb_gt: torch.Tensor, alpha: Optional[float] = None,
                regularisers: Optional[RegulariserSamples] = None) -> LossTerms:
        """rgb_gt: (N, 3) ground-truth colours in [-1, 1] for the batch's rays; ``regularisers``: the
        priors' samples (``pbidr.training.regularisers.RegulariserSampler``; None: none drawn, the
        prior terms are 0)."""
        alpha = self.alpha if alpha is None else float(alpha)
        c, geo = self.conf, out.geometry
        reg = no_regularisers(out.rgb) if regularisers is None else regularisers
        rgb = rgb_loss(out.rgb, rgb_gt, out.surface_mask)
        eik = eikonal_loss(geo.eikonal_gradients)
        mask = mask_loss(geo.traced_sdf, out.surface_mask, out.object_mask, alpha)
        targets = geo.mesh_pull_targets.detach() if c.mesh_pull_detach_target else geo.mesh_pull_targets
        pull = mesh_pull_loss(geo.mesh_pull_points, targets, c.mesh_pull_norm)
        normal = normal_loss(geo.sdf_normals, geo.mesh_normals)
        residual = _mean_square(geo.mesh_sdf, rgb)
        lowpass = _mean_square(reg.residual_lowpass, rgb)
        step = reg.albedo_step
        albedo_smooth = step.abs().sum(-1).mean() if step.numel() else rgb.new_zeros(())
        total = (
            c.rgb_weight * rgb
            + c.eikonal_weight * eik
            + c.mask_weight * mask
            + c.mesh_pull_weight * pull
            + c.normal_weight * normal
            + c.residual_weight * residual
            + c.residual_lowpass_weight * lowpass
            + c.albedo_smoothness_weight * albedo_smooth
        )
        return LossTerms(total=total, rgb=rgb, eikonal=eik, mask=mask, mesh_pull=pull, normal=normal,
                         residual=residual, residual_lowpass=lowpass, albedo_smoothness=albedo_smooth)
